package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"unicode/utf16"
)

// Partition tables of raw disks (and of hybrid ISOs): the MBR in sector 0 and, when present,
// the GPT header at LBA 1 with its entry array. Nothing here is needed to read a raw disk;
// the table is described in Info and checked for the rules a firmware or a hypervisor relies
// on. The rules mirror the GPT/MBR checks OpenStack added after CVE-2024-32498 (every boot
// flag 0x00 or 0x80; a protective 0xEE entry starts at LBA 1, with CHS 0/0/2, and stands
// alone in the first slot; a signed MBR defines at least one partition) and go beyond them:
// a GPT needs a protective MBR, its CRCs must match, its entries must lie in the usable
// area and inside the disk, and partitions must not overlap.
//
// An MBR partition that runs past the end of the file is described (BeyondEnd) but is not
// a finding: boot-sector-only images such as qemu's grub_mbr sample are legitimate. A GPT
// carries its own bounds, so a GPT entry past the end of the disk is a finding.

// PartitionTable describes the MBR or GPT found at the start of a raw disk.
type PartitionTable struct {
	Type       string `json:"type"`        // "mbr" or "gpt"
	SectorSize int    `json:"sector-size"` // 512, or 4096 for a GPT found at 4096
	// DiskSignature is the MBR's 32-bit disk identifier (offset 440), as 0x%08x.
	DiskSignature string `json:"disk-signature,omitempty"`
	// Partitions are the MBR's entries for "mbr", the GPT's used entries for "gpt".
	Partitions []Partition `json:"partitions"`
	// MBR holds the MBR's entries beside a GPT (the protective entry, or a hybrid MBR).
	MBR []Partition `json:"mbr,omitempty"`
	// GPT is the primary GPT header.
	GPT *GPTHeader `json:"gpt,omitempty"`
	// Omitted counts used GPT entries left out of Partitions (more than maxListedPartitions).
	Omitted int `json:"omitted,omitempty"`
}

// Partition is one MBR or GPT entry.
type Partition struct {
	Index    int    `json:"index"` // 1-based slot number in its table
	Type     string `json:"type"`  // "0x83" for MBR, the type GUID for GPT
	TypeName string `json:"type-name,omitempty"`
	FirstLBA uint64 `json:"first-lba"`
	LastLBA  uint64 `json:"last-lba"`
	// Start and Length are in bytes; -1 when the LBAs do not fit in 63 bits.
	Start    int64 `json:"start"`
	Length   int64 `json:"length"`
	Bootable bool  `json:"bootable,omitempty"` // MBR boot flag 0x80
	// BootFlag is the raw MBR boot indicator when it is neither 0x00 nor 0x80.
	BootFlag   string `json:"boot-flag,omitempty"`
	Extended   bool   `json:"extended,omitempty"` // MBR extended partition (not followed)
	GUID       string `json:"guid,omitempty"`     // GPT unique partition GUID
	Name       string `json:"name,omitempty"`     // GPT partition name
	Attributes uint64 `json:"attributes,omitempty"`
	// BeyondEnd: the partition runs past the end of the file.
	BeyondEnd bool `json:"beyond-end,omitempty"`
}

// GPTHeader is the primary GPT header (LBA 1).
type GPTHeader struct {
	Revision       string `json:"revision"`
	HeaderSize     uint32 `json:"header-size"`
	HeaderCRC32    string `json:"header-crc32"`
	HeaderCRCValid bool   `json:"header-crc-valid"`
	MyLBA          uint64 `json:"my-lba"`
	AlternateLBA   uint64 `json:"alternate-lba"`
	FirstUsableLBA uint64 `json:"first-usable-lba"`
	LastUsableLBA  uint64 `json:"last-usable-lba"`
	DiskGUID       string `json:"disk-guid"`
	EntriesLBA     uint64 `json:"entries-lba"`
	EntryCount     uint32 `json:"entry-count"`
	EntrySize      uint32 `json:"entry-size"`
	EntriesCRC32   string `json:"entries-crc32"`
	// EntriesCRCValid is false when the CRC does not match or the array could not be read.
	EntriesCRCValid bool `json:"entries-crc-valid"`
}

const (
	mbrTypeProtective = 0xee
	// gptMaxEntryBytes bounds the GPT entry array read: 1 MiB is 8192 entries of 128 bytes,
	// 64 times the 128 entries every partitioning tool writes.
	gptMaxEntryBytes = 1 << 20
	// maxListedPartitions bounds the GPT entries described in Info.
	maxListedPartitions = 256
	// ptMaxFindings bounds the findings one table can produce.
	ptMaxFindings = 32
)

// parsePartitions reads the MBR and, when present, the GPT of a raw disk.
func parsePartitions(o *opener) (*PartitionTable, []Finding, error) {
	return parsePartitionTable(o, false)
}

// ptState collects findings while a table is parsed.
type ptState struct {
	o     *opener
	iso   bool
	finds []Finding
}

func (s *ptState) add(code, format string, args ...any) {
	if len(s.finds) >= ptMaxFindings {
		return
	}
	f := Finding{code, fmt.Sprintf(format, args...)}
	if !slices.Contains(s.finds, f) {
		s.finds = append(s.finds, f)
	}
}

// parsePartitionTable parses the table. iso relaxes the rules that hybrid ISOs break by
// design (isohybrid and xorriso write an MBR whose first partition starts at LBA 0 and
// covers the whole image, next to a GPT without a protective entry, and GPT partitions that
// nest inside the ISO's own): there the boot flags, the CRCs, the 0xEE entry's own rules
// and the bounds of the disk are still checked.
func parsePartitionTable(o *opener, iso bool) (*PartitionTable, []Finding, error) {
	head := o.probe.head
	if len(head) < 512 {
		return nil, nil, nil
	}
	s := &ptState{o: o, iso: iso}
	mbr := head[:512]
	signed := mbr[510] == 0x55 && mbr[511] == 0xaa

	// A GPT header at LBA 1: 512-byte sectors, else 4096-byte sectors.
	ss := 0
	for _, size := range []int{512, 4096} {
		if len(head) >= 2*size && string(head[size:size+8]) == "EFI PART" {
			ss = size
			break
		}
	}
	if !signed && ss == 0 {
		return nil, nil, nil
	}
	if signed && ss == 0 && ptIsVolumeBootRecord(mbr) {
		// A FAT, NTFS or exFAT file system written to the whole disk: its boot sector
		// carries the 0x55AA signature but no partition table.
		return nil, nil, nil
	}

	pt := &PartitionTable{Type: "mbr", SectorSize: 512}
	var entries []Partition
	if signed {
		pt.DiskSignature = fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(mbr[440:]))
		entries = s.mbrEntries(mbr)
	}
	protective := 0
	for _, e := range entries {
		if e.Type == "0xee" {
			protective++
		}
	}

	if ss == 0 {
		if protective > 0 {
			s.add(FindPartitionTable, "the MBR has a protective (0xEE) entry but there is no GPT header at LBA 1")
		}
		if len(entries) == 0 && !iso {
			s.add(FindPartitionTable, "sector 0 has the MBR signature 0x55AA but defines no partition")
		}
		pt.Partitions = ptNonNil(entries)
		s.mbrOverlaps(entries)
		return pt, s.finds, nil
	}

	pt.Type = "gpt"
	pt.SectorSize = ss
	pt.MBR = entries
	switch {
	case !signed:
		s.add(FindPartitionTable, "GPT without a protective MBR: sector 0 has no 0x55AA signature")
	case protective == 0 && !iso:
		s.add(FindPartitionTable, "GPT without a protective MBR: the MBR has no 0xEE entry")
	}
	if err := s.gpt(pt, head, ss); err != nil {
		return nil, nil, err
	}
	pt.Partitions = ptNonNil(pt.Partitions)
	return pt, s.finds, nil
}

func ptNonNil(p []Partition) []Partition {
	if p == nil {
		return []Partition{}
	}
	return p
}

// mbrEntries parses the four primary entries and checks them. Logical partitions inside an
// extended partition are not followed: nothing here needs them.
func (s *ptState) mbrEntries(mbr []byte) []Partition {
	var out []Partition
	var nonEmpty []int
	for i := range 4 {
		e := mbr[446+16*i : 446+16*i+16]
		boot, typ := e[0], e[4]
		if boot != 0x00 && boot != 0x80 {
			s.add(FindPartitionTable, "MBR entry %d has boot flag 0x%02x (only 0x00 and 0x80 are valid)", i+1, boot)
		}
		if typ == 0 {
			continue // an empty slot
		}
		nonEmpty = append(nonEmpty, i)
		first := uint64(binary.LittleEndian.Uint32(e[8:]))
		count := uint64(binary.LittleEndian.Uint32(e[12:]))
		p := Partition{Index: i + 1, Type: fmt.Sprintf("0x%02x", typ), TypeName: mbrTypeNames[typ],
			FirstLBA: first, Bootable: boot == 0x80}
		if boot != 0x00 && boot != 0x80 {
			p.BootFlag = fmt.Sprintf("0x%02x", boot)
		}
		p.Extended = typ == 0x05 || typ == 0x0f || typ == 0x85
		p.LastLBA = first + count - 1
		if count == 0 {
			p.LastLBA = first
		}
		p.Start, p.Length = ptBytes(first, count, 512)
		if s.o.sizeKnown && (first+count)*512 > uint64(s.o.size) {
			p.BeyondEnd = true
		}
		if typ == mbrTypeProtective {
			if first != 1 {
				s.add(FindPartitionTable, "the protective (0xEE) MBR entry %d starts at LBA %d, not at LBA 1", i+1, first)
			}
			if e[1] != 0x00 || e[2] != 0x02 || e[3] != 0x00 {
				s.add(FindPartitionTable, "the protective (0xEE) MBR entry %d has start CHS %02x %02x %02x, not 00 02 00", i+1, e[1], e[2], e[3])
			}
		}
		out = append(out, p)
	}
	protective := 0
	for _, p := range out {
		if p.Type == "0xee" {
			protective++
		}
	}
	switch {
	case protective > 1:
		s.add(FindPartitionTable, "the MBR has %d protective (0xEE) entries; a protective MBR has exactly one", protective)
	case s.iso:
		// hybrid ISOs pair the 0xEE entry with others by design
	case protective == 1 && len(out) > 1:
		s.add(FindPartitionTable, "the MBR defines partitions beside its protective (0xEE) entry (a hybrid MBR)")
	case protective == 1 && nonEmpty[0] != 0:
		s.add(FindPartitionTable, "the protective (0xEE) entry is MBR entry %d; it must be the first", nonEmpty[0]+1)
	}
	return out
}

// mbrOverlaps reports MBR partitions that share sectors. Hybrid ISOs nest partitions by
// design, so the iso mode skips it.
func (s *ptState) mbrOverlaps(entries []Partition) {
	if s.iso {
		return
	}
	for i := range entries {
		for j := i + 1; j < len(entries); j++ {
			a, b := entries[i], entries[j]
			if a.Length == 0 || b.Length == 0 {
				continue
			}
			if a.FirstLBA <= b.LastLBA && b.FirstLBA <= a.LastLBA {
				s.add(FindPartitionTable, "MBR partitions %d and %d overlap", a.Index, b.Index)
			}
		}
	}
}

// gpt parses and checks the primary GPT header and its entries.
func (s *ptState) gpt(pt *PartitionTable, head []byte, ss int) error {
	h := head[ss : 2*ss]
	g := &GPTHeader{
		Revision:       fmt.Sprintf("%d.%d", binary.LittleEndian.Uint16(h[10:]), binary.LittleEndian.Uint16(h[8:])),
		HeaderSize:     binary.LittleEndian.Uint32(h[12:]),
		HeaderCRC32:    fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(h[16:])),
		MyLBA:          binary.LittleEndian.Uint64(h[24:]),
		AlternateLBA:   binary.LittleEndian.Uint64(h[32:]),
		FirstUsableLBA: binary.LittleEndian.Uint64(h[40:]),
		LastUsableLBA:  binary.LittleEndian.Uint64(h[48:]),
		DiskGUID:       ptGUID(h[56:72]),
		EntriesLBA:     binary.LittleEndian.Uint64(h[72:]),
		EntryCount:     binary.LittleEndian.Uint32(h[80:]),
		EntrySize:      binary.LittleEndian.Uint32(h[84:]),
		EntriesCRC32:   fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(h[88:])),
	}
	pt.GPT = g
	if g.HeaderSize < 92 || int(g.HeaderSize) > ss {
		s.add(FindPartitionTable, "GPT header size %d is outside 92..%d", g.HeaderSize, ss)
		return nil
	}
	buf := make([]byte, g.HeaderSize)
	copy(buf, h[:g.HeaderSize])
	clear(buf[16:20])
	g.HeaderCRCValid = crc32.ChecksumIEEE(buf) == binary.LittleEndian.Uint32(h[16:])
	if !g.HeaderCRCValid {
		s.add(FindPartitionTable, "GPT header CRC32 %s does not match its content (0x%08x)", g.HeaderCRC32, crc32.ChecksumIEEE(buf))
	}
	if g.MyLBA != 1 {
		s.add(FindPartitionTable, "GPT header says it is at LBA %d, but it is at LBA 1", g.MyLBA)
	}
	if g.FirstUsableLBA > g.LastUsableLBA {
		s.add(FindPartitionTable, "GPT first usable LBA %d is after the last usable LBA %d", g.FirstUsableLBA, g.LastUsableLBA)
	}
	if g.EntrySize < 128 || g.EntrySize&(g.EntrySize-1) != 0 {
		s.add(FindPartitionTable, "GPT entry size %d is not 128 times a power of two", g.EntrySize)
		return nil
	}
	arrayBytes := uint64(g.EntryCount) * uint64(g.EntrySize)
	if arrayBytes > gptMaxEntryBytes {
		s.add(FindTooLarge, "the GPT entry array is %d bytes (%d entries of %d); glimpse reads at most %d", arrayBytes, g.EntryCount, g.EntrySize, gptMaxEntryBytes)
		return nil
	}
	if g.EntryCount == 0 {
		g.EntriesCRCValid = binary.LittleEndian.Uint32(h[88:]) == crc32.ChecksumIEEE(nil)
		return nil
	}
	arraySectors := (arrayBytes + uint64(ss) - 1) / uint64(ss)
	if g.EntriesLBA < 2 || g.EntriesLBA > 1<<40 {
		s.add(FindPartitionTable, "GPT entry array at LBA %d is not after the header", g.EntriesLBA)
		return nil
	}
	arrayEnd := g.EntriesLBA + arraySectors - 1
	if g.EntriesLBA <= g.LastUsableLBA && arrayEnd >= g.FirstUsableLBA {
		s.add(FindPartitionTable, "the GPT entry array (LBA %d-%d) lies inside the usable area (LBA %d-%d)", g.EntriesLBA, arrayEnd, g.FirstUsableLBA, g.LastUsableLBA)
	}
	off := int64(g.EntriesLBA) * int64(ss)
	if s.o.pastEOF(off, int64(arrayBytes)) {
		s.add(FindPartitionTable, "the GPT entry array (%d bytes at offset %d) runs past the end of the file", arrayBytes, off)
		return nil
	}
	var arr []byte
	if within(off, int64(arrayBytes), int64(len(head))) {
		arr = head[off : off+int64(arrayBytes)]
	} else {
		var err error
		arr, err = readAt(s.o.r, off, int64(arrayBytes), Raw, "GPT entry array")
		if err != nil {
			var fe *FormatError
			if errors.As(err, &fe) {
				s.add(FindPartitionTable, "the GPT entry array cannot be read: %s", fe.Msg)
				return nil
			}
			return err
		}
	}
	g.EntriesCRCValid = crc32.ChecksumIEEE(arr) == binary.LittleEndian.Uint32(h[88:])
	if !g.EntriesCRCValid {
		s.add(FindPartitionTable, "GPT entry array CRC32 %s does not match its content (0x%08x)", g.EntriesCRC32, crc32.ChecksumIEEE(arr))
	}
	s.gptEntries(pt, arr, int(g.EntrySize), ss)
	return nil
}

func (s *ptState) gptEntries(pt *PartitionTable, arr []byte, size, ss int) {
	g := pt.GPT
	type span struct {
		first, last uint64
		index       int
	}
	var spans []span
	for i := 0; i+size <= len(arr); i += size {
		e := arr[i : i+128]
		if isZero(e[:16]) {
			continue
		}
		idx := i/size + 1
		first := binary.LittleEndian.Uint64(e[32:])
		last := binary.LittleEndian.Uint64(e[40:])
		typ := ptGUID(e[:16])
		p := Partition{Index: idx, Type: typ, TypeName: gptTypeNames[typ], FirstLBA: first, LastLBA: last,
			GUID: ptGUID(e[16:32]), Attributes: binary.LittleEndian.Uint64(e[48:]), Name: ptUTF16Name(e[56:128])}
		p.Start, p.Length = -1, -1
		if first <= last && last-first+1 != 0 {
			p.Start, p.Length = ptBytes(first, last-first+1, ss)
		}
		switch {
		case first > last:
			s.add(FindPartitionTable, "GPT partition %d ends (LBA %d) before it starts (LBA %d)", idx, last, first)
		case first < g.FirstUsableLBA || last > g.LastUsableLBA:
			if !s.iso {
				s.add(FindPartitionTable, "GPT partition %d (LBA %d-%d) lies outside the usable area (LBA %d-%d)", idx, first, last, g.FirstUsableLBA, g.LastUsableLBA)
			}
		}
		if s.o.sizeKnown && first <= last && (last >= uint64(s.o.size)/uint64(ss)) {
			p.BeyondEnd = true
			s.add(FindPartitionTable, "GPT partition %d (LBA %d-%d) runs past the end of the disk (%d sectors)", idx, first, last, uint64(s.o.size)/uint64(ss))
		}
		if first <= last {
			spans = append(spans, span{first, last, idx})
		}
		if len(pt.Partitions) < maxListedPartitions {
			pt.Partitions = append(pt.Partitions, p)
		} else {
			pt.Omitted++
		}
	}
	if s.iso {
		return
	}
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return a.index - b.index
	})
	// After sorting by start, a partition overlaps an earlier one exactly when it starts at
	// or before the furthest end seen so far.
	var maxEnd uint64
	maxIdx := 0
	for i, sp := range spans {
		if i > 0 && sp.first <= maxEnd {
			s.add(FindPartitionTable, "GPT partitions %d and %d overlap", maxIdx, sp.index)
		}
		if i == 0 || sp.last > maxEnd {
			maxEnd, maxIdx = sp.last, sp.index
		}
	}
}

// ptBytes converts an LBA range to bytes, or -1, -1 when it does not fit.
func ptBytes(first, count uint64, ss int) (int64, int64) {
	if first > 1<<53 || count > 1<<53 {
		return -1, -1
	}
	start, ok1 := mul64(int64(first), int64(ss))
	length, ok2 := mul64(int64(count), int64(ss))
	if !ok1 || !ok2 {
		return -1, -1
	}
	return start, length
}

// ptIsVolumeBootRecord reports whether a signed sector 0 is the boot sector of a file
// system (FAT, NTFS, exFAT) rather than an MBR. OpenStack's inspector excludes FAT the same
// way (two FATs and media descriptor 0xF8); this also requires a sane BIOS parameter block.
func ptIsVolumeBootRecord(b []byte) bool {
	if oem := string(b[3:11]); oem == "NTFS    " || oem == "EXFAT   " {
		return true
	}
	if !(b[0] == 0xeb && b[2] == 0x90) && b[0] != 0xe9 {
		return false
	}
	bps := binary.LittleEndian.Uint16(b[11:])
	spc := b[13]
	reserved := binary.LittleEndian.Uint16(b[14:])
	fats := b[16]
	media := b[21]
	return (bps == 512 || bps == 1024 || bps == 2048 || bps == 4096) &&
		spc != 0 && spc&(spc-1) == 0 && reserved >= 1 && (fats == 1 || fats == 2) &&
		(media == 0xf0 || media >= 0xf8)
}

// ptGUID formats a GUID stored as in GPT, VDI and VHDX: the first three fields little-endian.
func ptGUID(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X",
		binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]),
		b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15])
}

// ptUTF16Name decodes a NUL-terminated UTF-16LE name.
func ptUTF16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return strings.ToValidUTF8(string(utf16.Decode(u)), "\uFFFD")
}

var mbrTypeNames = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)", 0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Extended (LBA)",
	0x17: "Hidden HPFS/NTFS", 0x27: "Hidden NTFS WinRE", 0x82: "Linux swap", 0x83: "Linux",
	0x85: "Linux extended", 0x8e: "Linux LVM", 0xa5: "FreeBSD", 0xa6: "OpenBSD", 0xa9: "NetBSD",
	0xaf: "HFS / HFS+", 0xcd: "ISO9660 (hybrid)", 0xee: "GPT protective", 0xef: "EFI (FAT-12/16/32)",
	0xfd: "Linux raid autodetect",
}

var gptTypeNames = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
	"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery",
	"48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS+",
	"516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD",
}
