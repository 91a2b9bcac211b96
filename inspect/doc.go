// Package inspect detects, describes, checks and reads virtual machine disk images natively:
// raw, qcow2, vmdk, vhd (qemu's vpc), vhdx, vdi, iso, luks and qed (described so that they
// can be refused), and the ovf and ova containers.
//
// Probe answers "what is this?" from a bounded head and tail; Open parses the metadata (never
// the guest data) and returns an Image that describes itself (Info), says whether a
// hypervisor may safely open it (Safety), checks its structure like qemu-img check (Check),
// and reads the virtual disk a guest would see (ReadAt, Extent). NewStream does the same
// inspection on a stream, with no seeking and bounded memory, for uploads.
//
// # How a format is written
//
// Each format lives in one file (qcow2.go, vmdk.go, …) and is wired in at one place, the
// formatTable in formats.go. A format supplies:
//
//   - probeX(*probeData) bool: magic numbers and checksums only, from the head and tail
//     windows;
//   - openX(*opener) (core, error): parses the metadata and returns a core. It returns an
//     error wrapping ErrWrongFormat only when the magic does not match; anything else wrong is
//     a *FormatError naming the structure, the field, the offset and the value.
//
// The core (see disk.go) gives the virtual size, fills Info, lists findings, and maps a guest
// offset to a run (lookup); disk derives ReadAt and Extent from lookup for every format.
// Cores with structure to check implement check(*Report).
//
// Rules every parser keeps, because hostile files are the normal case:
//
//   - No allocation sized by a header field before that field is checked against the file
//     size and a bound from the spec; multiplications go through mul64.
//   - Open reads metadata only. Tables that grow with the disk (L1/L2, BAT, grain tables,
//     block maps, refcounts) are read when a lookup or a check first needs them.
//   - Read errors pass through wrapped (%w), never swallowed and never turned into
//     ErrWrongFormat: the stream inspector runs the same parser over a reader that answers
//     "not seen yet" for bytes that have not arrived, and must see that error.
//   - While o.sizeKnown is false (a stream still arriving) the parser neither reads relative
//     to the end of the file nor decides that something lies past the end.
//   - Other files (backing files, data files, extents, parents) are opened only through
//     o.openRelated, which enforces AllowBacking, confinement to the image's directory, the
//     chain depth limit and cycle detection.
//   - No format file calls into another format's parser; containers open the disks they hold
//     through the format table.
package inspect
