package inspect

// PartitionTable describes the MBR or GPT found at the start of a raw disk.
type PartitionTable struct {
	Type string `json:"type"` // "mbr" or "gpt"
}

// parsePartitions reads the MBR and, when present, the GPT of a raw disk.
// Placeholder: the partition-table parser lands in this file.
func parsePartitions(o *opener) (*PartitionTable, []Finding, error) { return nil, nil, nil }
