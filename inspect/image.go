package inspect

import (
	"fmt"
	"strings"
)

// Format is a disk or container format, named as Glance names its disk_format and
// container_format values.
type Format string

// The formats glimpse knows. Raw is the fallback: anything that is no other format.
const (
	Raw   Format = "raw"
	QCOW2 Format = "qcow2"
	VMDK  Format = "vmdk"
	VHD   Format = "vhd" // qemu calls it "vpc"
	VHDX  Format = "vhdx"
	VDI   Format = "vdi"
	ISO   Format = "iso"
	LUKS  Format = "luks"
	QED   Format = "qed"
	OVA   Format = "ova" // container: a tar holding an OVF descriptor and its disks
	OVF   Format = "ovf" // container: the XML descriptor alone
)

// Formats lists every format in the order Probe tries them (raw last).
func Formats() []Format {
	out := make([]Format, 0, len(formatTable))
	for _, f := range formatTable {
		out = append(out, f.format)
	}
	return out
}

// aliases maps qemu's driver names (and a few common spellings) to glimpse's names.
var aliases = map[string]Format{
	"vpc":   VHD,
	"file":  Raw,
	"img":   Raw,
	"bare":  Raw,
	"vmdk4": VMDK,
}

// ParseFormat accepts a Glance disk_format or container_format name, or one of qemu's
// driver names (vpc for vhd), case-insensitively.
func ParseFormat(s string) (Format, error) {
	l := strings.ToLower(strings.TrimSpace(s))
	if f, ok := aliases[l]; ok {
		return f, nil
	}
	for _, f := range formatTable {
		if string(f.format) == l {
			return f.format, nil
		}
	}
	return "", fmt.Errorf("unknown format %q (known: %s; qemu's vpc is accepted for vhd)", s, formatList())
}

func formatList() string {
	var b strings.Builder
	for i, f := range formatTable {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(f.format))
	}
	return b.String()
}

// Image is an opened disk image: its description, its safety findings, its structural
// check, and the virtual disk a guest would see.
//
// ReadAt and Extent are safe for concurrent use. Info, Size and Safety are computed when
// the image is opened and never fail; Check reads the image's metadata in full.
type Image interface {
	Info() Info
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
	// Extent describes the run of one kind that begins at off, at most n bytes long.
	Extent(off, n int64) (Extent, error)
	Check() Report
	Safety() []Finding
	Close() error
}

// Kind says how a range of the virtual disk is stored.
type Kind uint8

const (
	// KindData: the range is stored in the image (or in the file given by depth) as is.
	KindData Kind = iota
	// KindZero: the image records the range as zeros (a qcow2 zero cluster, a vhdx
	// PAYLOAD_BLOCK_ZERO block, a vmdk zeroed grain). It is allocated but holds no data.
	KindZero
	// KindHole: nothing in the chain describes the range; it reads as zeros.
	KindHole
	// KindCompressed: the range is stored compressed (qcow2 compressed clusters,
	// streamOptimized vmdk grains).
	KindCompressed
)

var kindNames = [...]string{"data", "zero", "hole", "compressed"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// MarshalText makes Kind print by name in JSON.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Extent is a run of the virtual disk with one Kind.
type Extent struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Kind   Kind  `json:"kind"`
	// Depth is 0 for the image itself, 1 for its backing file, and so on.
	Depth int `json:"depth"`
	// Offset is where the data of a KindData extent starts in the file that holds it,
	// or -1 when there is no such single place (zeros, holes, compressed data).
	Offset int64 `json:"offset"`
}

// ReadsZero reports whether every byte of the extent reads as zero.
func (e Extent) ReadsZero() bool { return e.Kind == KindZero || e.Kind == KindHole }

// End is the first guest offset past the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// Info describes an image. JSON names follow `qemu-img info --output=json` where the
// meaning is the same.
type Info struct {
	Filename        string `json:"filename"`
	Format          Format `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size,omitempty"`
	ClusterSize     int64  `json:"cluster-size,omitempty"`
	Encrypted       bool   `json:"encrypted,omitempty"`
	BackingFilename string `json:"backing-filename,omitempty"`
	BackingFormat   string `json:"backing-filename-format,omitempty"`
	DataFile        string `json:"data-file,omitempty"`
	DirtyFlag       bool   `json:"dirty-flag"`
	// FormatSpecific is the format's own detail, as qemu-img prints it: {"type", "data"}.
	FormatSpecific *FormatSpecific `json:"format-specific,omitempty"`
	// Children are the disks inside a container (the disks of an OVA).
	Children []Info `json:"children,omitempty"`
	// Safety is filled by the CLI and the servers from Image.Safety.
	Safety []Finding `json:"safety"`
}

// FormatSpecific carries one format's detail; Data is a struct of that format
// (QCOW2Info, VMDKInfo, …).
type FormatSpecific struct {
	Type Format `json:"type"`
	Data any    `json:"data"`
}

// Finding is one reason an image is not safe to hand to a hypervisor, or is outside policy.
// Code is stable (scripts match on it); Message is a sentence for people.
type Finding struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (f Finding) String() string { return f.Code + ": " + f.Message }

// Finding codes. They are part of glimpse's interface: never rename one.
const (
	FindBackingFile       = "backing-file"        // image depends on another file (qcow2, vmdk parent, vhd/vhdx/vdi differencing)
	FindDataFile          = "data-file"           // qcow2 external data file
	FindUnknownFeature    = "unknown-feature"     // incompatible feature bits this reader does not know
	FindUnsupportedFormat = "unsupported-format"  // qed: always refused
	FindCreateType        = "vmdk-create-type"    // vmdk createType outside the allow-list
	FindHostExtent        = "vmdk-host-extent"    // a vmdk extent that names a file
	FindDescriptor        = "vmdk-descriptor"     // descriptor not where the header says, too large, or malformed
	FindFooterMismatch    = "vmdk-footer"         // streamOptimized footer disagrees with its header
	FindPartitionTable    = "partition-table"     // MBR/GPT breaking protective-partition rules
	FindLUKSVersion       = "luks-version"        // luks other than version 1
	FindPastEOF           = "past-eof"            // a header or table points past the end of the file
	FindVirtualSize       = "virtual-size"        // virtual size above the configured limit
	FindPolyglot          = "polyglot"            // more than one format matches the same bytes
	FindFormatMismatch    = "format-mismatch"     // content is not the declared format
	FindOVAMemberPath     = "ova-member-path"     // absolute path, "..", or not a local name
	FindOVAMemberType     = "ova-member-type"     // link, device, fifo, directory where a file belongs
	FindOVAManifest       = "ova-manifest"        // manifest digest mismatch or malformed manifest
	FindOVFReference      = "ovf-reference"       // OVF names a file that is not in the archive
	FindOVFStructure      = "ovf-structure"       // OVA first member is not the .ovf, or the OVF is malformed
	FindEncrypted         = "encrypted"           // image data is encrypted (qcow2 AES/LUKS payloads)
	FindCorrupt           = "corrupt"             // the format marks itself corrupt, or a dirty log needs replay
	FindMalformed         = "malformed"           // a structure could not be parsed at all
	FindNotAllowed        = "format-not-allowed"  // the format is outside --allow-format
	FindStreamUnreachable = "stream-unreachable"  // metadata lies where a one-pass reader cannot see it
	FindDiskInContainer   = "container-disk"      // a disk inside a container has findings of its own
	FindTooLarge          = "metadata-too-large"  // a metadata structure is larger than glimpse accepts
	FindUnreadableSection = "unsupported-feature" // valid, but a feature glimpse cannot read
)

// Report is the result of a structural check, like `qemu-img check`. JSON names follow
// `qemu-img check --output=json`.
type Report struct {
	Filename string `json:"filename"`
	Format   Format `json:"format"`
	// Supported is false when the format has no structure to check (raw, iso); qemu-img
	// says "This image format does not support checks".
	Supported          bool      `json:"-"`
	CheckErrors        int       `json:"check-errors"`
	Corruptions        int       `json:"corruptions,omitempty"`
	Leaks              int       `json:"leaks,omitempty"`
	ImageEndOffset     int64     `json:"image-end-offset,omitempty"`
	TotalClusters      int64     `json:"total-clusters,omitempty"`
	AllocatedClusters  int64     `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64     `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64     `json:"compressed-clusters,omitempty"`
	Problems           []Problem `json:"problems,omitempty"`
}

// ProblemKind classifies what Check found.
type ProblemKind string

const (
	Corruption ProblemKind = "corruption" // metadata is inconsistent: data may be lost or misread
	Leak       ProblemKind = "leak"       // space is allocated but unused: harmless, wastes space
	CheckError ProblemKind = "error"      // the check could not finish (I/O error, unreadable table)
)

// Problem is one thing Check found, with where it was found.
type Problem struct {
	Kind      ProblemKind `json:"kind"`
	Structure string      `json:"structure"`
	Offset    int64       `json:"offset"`
	Message   string      `json:"message"`
}

// Add records a problem and bumps the matching counter.
func (r *Report) Add(kind ProblemKind, structure string, off int64, format string, args ...any) {
	const maxProblems = 1000 // a badly broken image must not make the report unbounded
	switch kind {
	case Corruption:
		r.Corruptions++
	case Leak:
		r.Leaks++
	default:
		r.CheckErrors++
	}
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, Problem{Kind: kind, Structure: structure, Offset: off, Message: fmt.Sprintf(format, args...)})
	}
}

// Clean reports whether the check found nothing at all.
func (r Report) Clean() bool { return r.CheckErrors == 0 && r.Corruptions == 0 && r.Leaks == 0 }
