package inspect

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// VHDX (Hyper-V Virtual Hard Disk v2), after Microsoft's "VHDX Format Specification" v1.00
// (MS-VHDX). All fields are little-endian; GUIDs are stored in Microsoft's mixed-endian layout.
//
// The first megabyte is the header section: the file type identifier ("vhdxfile" and a
// UTF-16 creator) at 0, two headers at 64 and 128 KiB (CRC-32C, the one with the larger
// sequence number is current), two copies of the region table at 192 and 256 KiB. The region
// table locates the BAT and the metadata region; the metadata region holds a table of items
// (file parameters, virtual disk size, logical and physical sector size, page 83 data,
// parent locator). The header locates the log, a circular buffer of metadata updates that
// must be replayed before the file can be trusted when it holds valid entries.
//
// The BAT has one 64-bit entry per payload block (state in bits 0-2, file offset in MiB in
// bits 20-63), with a sector bitmap entry after every chunk-ratio payload entries, where the
// chunk ratio is 2^23 x logical sector size / block size.
//
// glimpse follows qemu 7.2 (block/vhdx.c, vhdx-log.c) in what it accepts and how it reads:
// payload blocks NOT_PRESENT, UNDEFINED, UNMAPPED (and the v0.95 UNMAPPED, 5) read as zeros
// (KindHole), ZERO as zeros (KindZero), FULLY_PRESENT from the file; PARTIALLY_PRESENT and
// state 4 are errors. A differencing disk (HasParent) is described but not read (qemu cannot
// read one either), and neither is a file whose log needs replaying (qemu refuses to open one
// read-only). One deliberate difference: qemu counts the virtual size in 512-byte units of
// logical sectors, so it reports 1/8 of the size of a disk with 4096-byte logical sectors;
// glimpse reports the size the metadata gives.

// VHDXInfo is the format-specific detail of a vhdx image.
type VHDXInfo struct {
	Creator              string `json:"creator,omitempty"`
	BlockSize            int64  `json:"block-size"`
	LogicalSectorSize    uint32 `json:"logical-sector-size"`
	PhysicalSectorSize   uint32 `json:"physical-sector-size"`
	LeaveBlocksAllocated bool   `json:"leave-blocks-allocated"` // a fixed disk
	HasParent            bool   `json:"has-parent"`
	ChunkRatio           int64  `json:"chunk-ratio"`
	DiskID               string `json:"disk-id"` // page 83 data
	// ParentLocatorType is the GUID of the parent locator's type (the vhdx one is
	// b04aefb7-d19e-4a81-b789-25b8e9445913); ParentLocator its key/value entries.
	ParentLocatorType string               `json:"parent-locator-type,omitempty"`
	ParentLocator     []VHDXParentLocEntry `json:"parent-locator,omitempty"`

	CurrentHeader   int       `json:"current-header"` // 1 or 2
	HeaderSequences [2]uint64 `json:"header-sequence-numbers"`
	FileWriteGUID   string    `json:"file-write-guid"`
	DataWriteGUID   string    `json:"data-write-guid"`
	LogGUID         string    `json:"log-guid"`
	LogOffset       int64     `json:"log-offset"`
	LogLength       int64     `json:"log-length"`
	// LogPresent: the header names a log (non-zero log GUID). LogNeedsReplay: the log holds
	// valid entries, so the file's metadata is not to be trusted until they are replayed.
	LogPresent     bool `json:"log-present"`
	LogNeedsReplay bool `json:"log-needs-replay"`

	BATOffset      int64 `json:"bat-offset"`
	BATLength      int64 `json:"bat-length"`
	MetadataOffset int64 `json:"metadata-offset"`
	MetadataLength int64 `json:"metadata-length"`
}

// VHDXParentLocEntry is one key/value pair of a vhdx parent locator.
type VHDXParentLocEntry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

const (
	vhdxMiB            = 1 << 20
	vhdxHeaderSection  = vhdxMiB
	vhdxHeaderSize     = 4 << 10
	vhdxRegionSize     = 64 << 10
	vhdxMetaTableSize  = 64 << 10
	vhdxMaxTableCount  = 2047
	vhdxMinBlock       = vhdxMiB
	vhdxMaxBlock       = 256 * vhdxMiB
	vhdxMaxVirtual     = 64 << 40 // 64 TiB, the spec's limit
	vhdxMaxItem        = vhdxMiB  // the spec's limit on a metadata item
	vhdxMaxParentLoc   = 64 << 10 // what glimpse reads of a parent locator
	vhdxLogSector      = 4 << 10
	vhdxSectorsPerBlk  = 1 << 23 // chunk ratio numerator: 2^23 sectors per bitmap block
	vhdxCreatorMaxSize = 512
)

var (
	vhdxHeaderOffsets = [2]int64{64 << 10, 128 << 10}
	vhdxRegionOffsets = [2]int64{192 << 10, 256 << 10}
)

// Payload block states (bits 0-2 of a BAT entry).
const (
	vhdxNotPresent       = 0
	vhdxUndefined        = 1
	vhdxZero             = 2
	vhdxUnmapped         = 3
	vhdxUnmappedV095     = 5
	vhdxFullyPresent     = 6
	vhdxPartiallyPresent = 7
	vhdxSBPresent        = 6 // sector bitmap block present
)

// vhdxMSGUID builds a GUID in Microsoft's on-disk layout from its textual parts.
func vhdxMSGUID(d1 uint32, d2, d3 uint16, d4 [8]byte) [16]byte {
	var g [16]byte
	binary.LittleEndian.PutUint32(g[0:], d1)
	binary.LittleEndian.PutUint16(g[4:], d2)
	binary.LittleEndian.PutUint16(g[6:], d3)
	copy(g[8:], d4[:])
	return g
}

// vhdxFormatGUID prints a GUID stored in Microsoft's layout the way Windows prints it.
func vhdxFormatGUID(g [16]byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]),
		binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:16])
}

var (
	vhdxBATGUID        = vhdxMSGUID(0x2dc27766, 0xf623, 0x4200, [8]byte{0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08})
	vhdxMetadataGUID   = vhdxMSGUID(0x8b7ca206, 0x4790, 0x4b9a, [8]byte{0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e})
	vhdxFileParamsGUID = vhdxMSGUID(0xcaa16737, 0xfa36, 0x4d43, [8]byte{0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b})
	vhdxDiskSizeGUID   = vhdxMSGUID(0x2fa54224, 0xcd1b, 0x4876, [8]byte{0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8})
	vhdxPage83GUID     = vhdxMSGUID(0xbeca12ab, 0xb2e6, 0x4523, [8]byte{0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46})
	vhdxLogicalGUID    = vhdxMSGUID(0x8141bf1d, 0xa96f, 0x4709, [8]byte{0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f})
	vhdxPhysicalGUID   = vhdxMSGUID(0xcda348c7, 0x445d, 0x4471, [8]byte{0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56})
	vhdxParentLocGUID  = vhdxMSGUID(0xa8d35f2d, 0xb30b, 0x454d, [8]byte{0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c})
)

var vhdxCastagnoli = crc32.MakeTable(crc32.Castagnoli)

// vhdxChecksumOK verifies a structure's CRC-32C, computed with its 4-byte checksum field at
// offset 4 taken as zero.
func vhdxChecksumOK(b []byte) bool {
	return vhdxChecksum(b) == binary.LittleEndian.Uint32(b[4:])
}

func vhdxChecksum(b []byte) uint32 {
	var zero [4]byte
	crc := crc32.Update(0, vhdxCastagnoli, b[:4])
	crc = crc32.Update(crc, vhdxCastagnoli, zero[:])
	return crc32.Update(crc, vhdxCastagnoli, b[8:])
}

func probeVHDX(p *probeData) bool {
	b := p.at(0, 8)
	return b != nil && string(b) == "vhdxfile"
}

// vhdxHeader is one of the two 4 KiB headers.
type vhdxHeader struct {
	valid      bool
	raw        []byte
	seq        uint64
	fileWrite  [16]byte
	dataWrite  [16]byte
	logGUID    [16]byte
	logVersion uint16
	version    uint16
	logLength  uint32
	logOffset  uint64
}

func parseVHDXHeader(b []byte) vhdxHeader {
	h := vhdxHeader{raw: b}
	h.seq = binary.LittleEndian.Uint64(b[8:])
	copy(h.fileWrite[:], b[16:32])
	copy(h.dataWrite[:], b[32:48])
	copy(h.logGUID[:], b[48:64])
	h.logVersion = binary.LittleEndian.Uint16(b[64:])
	h.version = binary.LittleEndian.Uint16(b[66:])
	h.logLength = binary.LittleEndian.Uint32(b[68:])
	h.logOffset = binary.LittleEndian.Uint64(b[72:])
	h.valid = string(b[:4]) == "head" && vhdxChecksumOK(b) && h.version == 1
	return h
}

// vhdxRegion is a region table entry.
type vhdxRegion struct {
	guid     [16]byte
	offset   uint64
	length   uint32
	required bool
}

// vhdxSpan is a byte range of the file that holds a structure, for overlap checks.
type vhdxSpan struct {
	start, end uint64
	what       string
}

// vhdxOverlaps is qemu's vhdx_region_check: [start, start+length) against every span.
func vhdxOverlaps(spans []vhdxSpan, start, length uint64) (vhdxSpan, bool) {
	end := start + length
	for _, s := range spans {
		if !(start >= s.end || end <= s.start) {
			return s, true
		}
	}
	return vhdxSpan{}, false
}

// vhdxItem is a metadata table entry.
type vhdxItem struct {
	offset, length uint32
	flags          uint32
	entryOff       int64 // where the table entry is, for errors
}

type vhdxCore struct {
	r         io.ReaderAt
	file      *os.File // r, when it is a plain file (see vhdSparse)
	fileSize  int64
	sizeKnown bool

	creator    string
	headers    [2]vhdxHeader
	cur        int // index of the current header
	logOffset  int64
	logLength  int64
	logPresent bool
	dirty      bool
	dirtyWhy   string

	regions    []vhdxRegion
	spans      []vhdxSpan // header section, log, regions: what payload blocks may not overlap
	batOffset  int64
	batLength  int64
	metaOffset int64
	metaLength int64

	blockSize   int64
	leaveAlloc  bool
	hasParent   bool
	virtual     int64
	logical     uint32
	physical    uint32
	page83      [16]byte
	locType     [16]byte
	locEntries  []VHDXParentLocEntry
	parentRef   string
	chunkRatio  int64
	dataBlocks  int64
	batEntries  int64
	bat         *vhdxBATReader
	finds       []Finding
	virtualOdd  bool // the virtual size was not a multiple of the logical sector size
	rawDiskSize uint64
}

// vhdxBATReader wraps the lazily paged BAT.
type vhdxBATReader = vhdTable

func openVHDX(o *opener) (core, error) {
	sig, err := readAt(o.r, 0, min(8, o.size), VHDX, "file type identifier")
	if err != nil {
		return nil, err
	}
	if string(sig) != "vhdxfile" {
		return nil, wrongFormat(VHDX, "no \"vhdxfile\" signature at offset 0")
	}
	c := &vhdxCore{r: o.r, fileSize: o.size, sizeKnown: o.sizeKnown}
	c.file, _ = o.r.(*os.File)
	if o.sizeKnown && o.size < vhdxHeaderSection {
		return nil, o.ferr(VHDX, "header section", "", 0, o.size, "the file is smaller than the 1 MiB header section")
	}
	id, err := readAt(o.r, 8, vhdxCreatorMaxSize, VHDX, "file type identifier")
	if err != nil {
		return nil, err
	}
	c.creator = strings.ToValidUTF8(vhdDecodeUTF16(id, false), "\uFFFD")
	if err := c.openHeaders(o); err != nil {
		return nil, err
	}
	// qemu parses the log before the region table; glimpse reads everything in file order
	// so that the stream inspector, which cannot go back, sees each structure as it passes.
	if err := c.openRegions(o); err != nil {
		return nil, err
	}
	if c.metaOffset < c.logOffset {
		if err := c.openMetadata(o); err != nil {
			return nil, err
		}
		if err := c.openLog(o); err != nil {
			return nil, err
		}
	} else {
		if err := c.openLog(o); err != nil {
			return nil, err
		}
		if err := c.openMetadata(o); err != nil {
			return nil, err
		}
	}
	if err := c.openBAT(o); err != nil {
		return nil, err
	}
	if c.hasParent {
		msg := "differencing disk: its contents depend on a parent image"
		if c.parentRef != "" {
			msg += fmt.Sprintf(" (%q)", c.parentRef)
		}
		c.finds = append(c.finds, Finding{FindBackingFile, msg})
	}
	return c, nil
}

// openHeaders reads both headers and picks the current one as qemu does: the valid one with
// the larger sequence number; two valid headers with the same number must be identical
// (Disk2VHD writes them so).
func (c *vhdxCore) openHeaders(o *opener) error {
	for i, off := range vhdxHeaderOffsets {
		b, err := readAt(o.r, off, vhdxHeaderSize, VHDX, "header")
		if err != nil {
			return err
		}
		c.headers[i] = parseVHDXHeader(b)
	}
	if err := c.pickHeader(o); err != nil {
		return err
	}
	// The log fields qemu checks whether or not there is a log.
	h := &c.headers[c.cur]
	hOff := vhdxHeaderOffsets[c.cur]
	if h.logOffset < vhdxMiB || h.logOffset%vhdxMiB != 0 || h.logOffset > math.MaxInt64/2 {
		return o.ferr(VHDX, "header", "log_offset", hOff+72, h.logOffset, "is not a multiple of 1 MiB past the header section")
	}
	if h.logVersion != 0 {
		return o.ferr(VHDX, "header", "log_version", hOff+64, h.logVersion, "is not 0, the only log version")
	}
	c.logOffset, c.logLength = int64(h.logOffset), int64(h.logLength)
	c.spans = append(c.spans, vhdxSpan{uint64(c.logOffset), uint64(c.logOffset + c.logLength), "log"})
	return nil
}

func (c *vhdxCore) pickHeader(o *opener) error {
	h1, h2 := &c.headers[0], &c.headers[1]
	switch {
	case h1.valid && !h2.valid:
		c.cur = 0
	case !h1.valid && h2.valid:
		c.cur = 1
	case !h1.valid && !h2.valid:
		return o.ferr(VHDX, "header", "", vhdxHeaderOffsets[0], nil,
			"neither header (at 64 KiB and 128 KiB) has a valid signature, CRC-32C and version 1")
	case h1.seq > h2.seq:
		c.cur = 0
	case h2.seq > h1.seq:
		c.cur = 1
	case bytes.Equal(h1.raw, h2.raw): // all 4 KiB, as qemu compares them
		c.cur = 0
	default:
		return o.ferr(VHDX, "header", "sequence_number", vhdxHeaderOffsets[1]+8, h2.seq,
			"is the same in both headers, but the headers differ: which one is current cannot be told")
	}
	return nil
}

// openLog checks the log fields as qemu does and, when the header names a log, looks for
// valid entries: any valid entry means the log needs replaying before the file is read.
func (c *vhdxCore) openLog(o *opener) error {
	h := &c.headers[c.cur]
	hOff := vhdxHeaderOffsets[c.cur]
	if h.logGUID == ([16]byte{}) || h.logLength == 0 {
		return nil
	}
	c.logPresent = true
	if h.logLength%vhdxMiB != 0 {
		return o.ferr(VHDX, "header", "log_length", hOff+68, h.logLength, "is not a multiple of 1 MiB")
	}
	if o.pastEOF(c.logOffset, c.logLength) {
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf(
			"the log (%d bytes at offset %d) runs past the end of the file (%d bytes)", c.logLength, c.logOffset, o.size)})
	}
	dirty, why, err := vhdxScanLog(o.r, c.logOffset, c.logLength, h.logGUID)
	if err != nil {
		return err
	}
	if dirty {
		c.dirty, c.dirtyWhy = true, why
		c.finds = append(c.finds, Finding{FindCorrupt, "the log holds " + why +
			" that must be replayed before the image can be trusted (qemu-img check -r all replays it)"})
	}
	return nil
}

// openRegions parses the region table (the copy at 192 KiB, as qemu reads it).
func (c *vhdxCore) openRegions(o *opener) error {
	off := vhdxRegionOffsets[0]
	b, err := readAt(o.r, off, vhdxRegionSize, VHDX, "region table")
	if err != nil {
		return err
	}
	if !vhdxChecksumOK(b) {
		return o.ferr(VHDX, "region table", "checksum", off+4, fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(b[4:])),
			"does not match the table (0x%08x)", vhdxChecksum(b))
	}
	if string(b[:4]) != "regi" {
		return o.ferr(VHDX, "region table", "signature", off, fmt.Sprintf("%q", b[:4]), "is not \"regi\"")
	}
	count := binary.LittleEndian.Uint32(b[8:])
	if count > vhdxMaxTableCount {
		return o.ferr(VHDX, "region table", "entry_count", off+8, count, "exceeds the limit of %d entries", vhdxMaxTableCount)
	}
	spans := []vhdxSpan{{0, vhdxHeaderSection, "header section"}}
	batFound, metaFound := false, false
	for i := range int64(count) {
		eo := 16 + 32*i
		e := b[eo:]
		var r vhdxRegion
		copy(r.guid[:], e[:16])
		r.offset = binary.LittleEndian.Uint64(e[16:])
		r.length = binary.LittleEndian.Uint32(e[24:])
		r.required = binary.LittleEndian.Uint32(e[28:])&1 != 0
		if r.offset > math.MaxInt64/2 {
			return o.ferr(VHDX, "region table", "file_offset", off+eo+16, r.offset, "is not a file offset")
		}
		if s, ok := vhdxOverlaps(c.spans, r.offset, uint64(r.length)); ok {
			return o.ferr(VHDX, "region table", "file_offset", off+eo+16, r.offset,
				"region %s (%d bytes) overlaps the %s", vhdxFormatGUID(r.guid), r.length, s.what)
		}
		switch r.guid {
		case vhdxBATGUID:
			if batFound {
				return o.ferr(VHDX, "region table", "guid", off+eo, vhdxFormatGUID(r.guid), "names the BAT region twice")
			}
			batFound = true
			c.batOffset, c.batLength = int64(r.offset), int64(r.length)
			c.spans = append(c.spans, vhdxSpan{r.offset, r.offset + uint64(r.length), "BAT region"})
		case vhdxMetadataGUID:
			if metaFound {
				return o.ferr(VHDX, "region table", "guid", off+eo, vhdxFormatGUID(r.guid), "names the metadata region twice")
			}
			metaFound = true
			c.metaOffset, c.metaLength = int64(r.offset), int64(r.length)
			c.spans = append(c.spans, vhdxSpan{r.offset, r.offset + uint64(r.length), "metadata region"})
		default:
			c.spans = append(c.spans, vhdxSpan{r.offset, r.offset + uint64(r.length), "region " + vhdxFormatGUID(r.guid)})
			if r.required {
				return vhdxUnsupported(o.ferr(VHDX, "region table", "guid", off+eo, vhdxFormatGUID(r.guid),
					"is a region marked required that glimpse does not know (qemu refuses it too)"))
			}
		}
		c.regions = append(c.regions, r)
	}
	if !batFound || !metaFound {
		return o.ferr(VHDX, "region table", "", off, nil, "has no BAT region or no metadata region")
	}
	c.spans = append(spans, c.spans...)
	return nil
}

// vhdxUnsupported marks a FormatError as something glimpse cannot read as well: errors.Is
// finds both ErrInvalid and ErrUnsupported.
func vhdxUnsupported(fe *FormatError) error { return fmt.Errorf("%w: %w", fe, ErrUnsupported) }

// openMetadata parses the metadata table and the items glimpse needs.
func (c *vhdxCore) openMetadata(o *opener) error {
	mo := c.metaOffset
	if o.pastEOF(mo, vhdxMetaTableSize) {
		return o.ferr(VHDX, "region table", "file_offset", vhdxRegionOffsets[0], mo,
			"places the metadata table past the end of the file (%d bytes)", o.size)
	}
	b, err := readAt(o.r, mo, vhdxMetaTableSize, VHDX, "metadata table")
	if err != nil {
		return err
	}
	if string(b[:8]) != "metadata" {
		return o.ferr(VHDX, "metadata table", "signature", mo, fmt.Sprintf("%q", b[:8]), "is not \"metadata\"")
	}
	count := binary.LittleEndian.Uint16(b[10:])
	if count > vhdxMaxTableCount {
		return o.ferr(VHDX, "metadata table", "entry_count", mo+10, count, "exceeds the limit of %d entries", vhdxMaxTableCount)
	}
	known := map[[16]byte]string{
		vhdxFileParamsGUID: "file parameters", vhdxDiskSizeGUID: "virtual disk size", vhdxPage83GUID: "page 83 data",
		vhdxLogicalGUID: "logical sector size", vhdxPhysicalGUID: "physical sector size", vhdxParentLocGUID: "parent locator",
	}
	items := map[[16]byte]vhdxItem{}
	for i := range int64(count) {
		eo := 32 + 32*i
		e := b[eo:]
		var g [16]byte
		copy(g[:], e[:16])
		it := vhdxItem{
			offset:   binary.LittleEndian.Uint32(e[16:]),
			length:   binary.LittleEndian.Uint32(e[20:]),
			flags:    binary.LittleEndian.Uint32(e[24:]),
			entryOff: mo + eo,
		}
		name, ok := known[g]
		if !ok {
			if it.flags&4 != 0 { // IsRequired
				return vhdxUnsupported(o.ferr(VHDX, "metadata table", "item_id", mo+eo, vhdxFormatGUID(g),
					"is a metadata item marked required that glimpse does not know (qemu refuses it too)"))
			}
			continue
		}
		if _, dup := items[g]; dup {
			return o.ferr(VHDX, "metadata table", "item_id", mo+eo, vhdxFormatGUID(g), "names the %s item twice", name)
		}
		// The spec: items lie in the region, after the 64 KiB table, at most 1 MiB long.
		if it.length > 0 && (it.offset < vhdxMetaTableSize || it.length > vhdxMaxItem ||
			int64(it.offset)+int64(it.length) > c.metaLength) {
			return o.ferr(VHDX, "metadata table", "offset", mo+eo+16, it.offset,
				"places the %s item (%d bytes) outside the metadata region (%d bytes, items after its first 64 KiB)", name, it.length, c.metaLength)
		}
		items[g] = it
	}
	for _, g := range [][16]byte{vhdxFileParamsGUID, vhdxDiskSizeGUID, vhdxPage83GUID, vhdxLogicalGUID, vhdxPhysicalGUID} {
		if _, ok := items[g]; !ok {
			return o.ferr(VHDX, "metadata table", "", mo, nil, "has no %s item, which every vhdx must have", known[g])
		}
	}
	// Read the items in file order (for the stream inspector).
	need := map[[16]byte]int64{vhdxFileParamsGUID: 8, vhdxDiskSizeGUID: 8, vhdxPage83GUID: 16, vhdxLogicalGUID: 4, vhdxPhysicalGUID: 4}
	order := [][16]byte{vhdxFileParamsGUID, vhdxDiskSizeGUID, vhdxPage83GUID, vhdxLogicalGUID, vhdxPhysicalGUID}
	if loc, ok := items[vhdxParentLocGUID]; ok {
		if loc.length < 20 {
			return o.ferr(VHDX, "metadata table", "length", loc.entryOff+20, loc.length, "is too short for a parent locator")
		}
		if loc.length <= vhdxMaxParentLoc {
			need[vhdxParentLocGUID] = int64(loc.length)
			order = append(order, vhdxParentLocGUID)
		}
	}
	slices.SortStableFunc(order, func(a, b [16]byte) int { return cmp.Compare(items[a].offset, items[b].offset) })
	data := map[[16]byte][]byte{}
	for _, g := range order {
		it, n := items[g], need[g]
		if int64(it.length) < n {
			return o.ferr(VHDX, "metadata table", "length", it.entryOff+20, it.length,
				"is too short for the %s item (%d bytes)", known[g], n)
		}
		b, err := readAt(o.r, mo+int64(it.offset), n, VHDX, known[g])
		if err != nil {
			return err
		}
		data[g] = b
	}
	read := func(g [16]byte, _ int64) ([]byte, error) { return data[g], nil }
	fp, err := read(vhdxFileParamsGUID, 8)
	if err != nil {
		return err
	}
	bs := binary.LittleEndian.Uint32(fp)
	flags := binary.LittleEndian.Uint32(fp[4:])
	c.leaveAlloc = flags&1 != 0
	c.hasParent = flags&2 != 0
	fpOff := mo + int64(items[vhdxFileParamsGUID].offset)
	if bs < vhdxMinBlock || bs > vhdxMaxBlock || bs&(bs-1) != 0 {
		return o.ferr(VHDX, "file parameters", "block_size", fpOff, bs, "is not a power of two from 1 MiB to 256 MiB")
	}
	c.blockSize = int64(bs)
	ds, err := read(vhdxDiskSizeGUID, 8)
	if err != nil {
		return err
	}
	c.rawDiskSize = binary.LittleEndian.Uint64(ds)
	dsOff := mo + int64(items[vhdxDiskSizeGUID].offset)
	ls, err := read(vhdxLogicalGUID, 4)
	if err != nil {
		return err
	}
	c.logical = binary.LittleEndian.Uint32(ls)
	if c.logical != 512 && c.logical != 4096 {
		return o.ferr(VHDX, "logical sector size", "", mo+int64(items[vhdxLogicalGUID].offset), c.logical, "is neither 512 nor 4096")
	}
	ps, err := read(vhdxPhysicalGUID, 4)
	if err != nil {
		return err
	}
	c.physical = binary.LittleEndian.Uint32(ps)
	p83, err := read(vhdxPage83GUID, 16)
	if err != nil {
		return err
	}
	copy(c.page83[:], p83)
	if c.rawDiskSize > vhdxMaxVirtual {
		return o.ferr(VHDX, "virtual disk size", "", dsOff, c.rawDiskSize, "exceeds the 64 TiB a vhdx can hold")
	}
	c.virtual = int64(c.rawDiskSize) &^ int64(c.logical-1)
	c.virtualOdd = int64(c.rawDiskSize) != c.virtual
	c.chunkRatio = vhdxSectorsPerBlk * int64(c.logical) / c.blockSize
	c.dataBlocks = (c.virtual + c.blockSize - 1) / c.blockSize

	loc, hasLoc := items[vhdxParentLocGUID]
	switch {
	case c.hasParent && !hasLoc:
		return o.ferr(VHDX, "file parameters", "has_parent", fpOff+4, flags, "is set, but there is no parent locator item")
	case c.hasParent:
		return c.openParentLocator(o, mo, loc, data[vhdxParentLocGUID])
	}
	return nil
}

// openParentLocator decodes the parent locator's key/value pairs (UTF-16LE).
func (c *vhdxCore) openParentLocator(o *opener, mo int64, it vhdxItem, b []byte) error {
	if it.length > vhdxMaxParentLoc {
		c.finds = append(c.finds, Finding{FindTooLarge, fmt.Sprintf(
			"parent locator of %d bytes at offset %d is larger than glimpse reads (%d bytes)", it.length, mo+int64(it.offset), vhdxMaxParentLoc)})
		return nil
	}
	base := mo + int64(it.offset)
	copy(c.locType[:], b[:16])
	n := int64(binary.LittleEndian.Uint16(b[18:]))
	if 20+12*n > int64(len(b)) {
		return o.ferr(VHDX, "parent locator", "key_value_count", base+18, n, "entries do not fit in the %d-byte item", len(b))
	}
	str := func(off uint32, l uint16) (string, bool) {
		end := int64(off) + int64(l)
		if int64(off) < 20+12*n || end > int64(len(b)) || l%2 != 0 {
			return "", false
		}
		return vhdDecodeUTF16(b[off:end], false), true
	}
	for i := range n {
		e := b[20+12*i:]
		k, ok1 := str(binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint16(e[8:]))
		v, ok2 := str(binary.LittleEndian.Uint32(e[4:]), binary.LittleEndian.Uint16(e[10:]))
		if !ok1 || !ok2 {
			return o.ferr(VHDX, "parent locator", "entry", base+20+12*i, i, "has a key or value outside the item")
		}
		c.locEntries = append(c.locEntries, VHDXParentLocEntry{Key: strings.ToValidUTF8(k, "\uFFFD"), Value: strings.ToValidUTF8(v, "\uFFFD")})
	}
	for _, key := range []string{"relative_path", "absolute_win32_path", "volume_path"} {
		for _, e := range c.locEntries {
			if e.Key == key && e.Value != "" && c.parentRef == "" {
				c.parentRef = e.Value
			}
		}
	}
	return nil
}

// openBAT checks the BAT's size against the disk (never reading it).
func (c *vhdxCore) openBAT(o *opener) error {
	if c.dataBlocks > 0 {
		if c.hasParent {
			c.batEntries = ((c.dataBlocks + c.chunkRatio - 1) / c.chunkRatio) * (c.chunkRatio + 1)
		} else {
			c.batEntries = c.dataBlocks + (c.dataBlocks-1)/c.chunkRatio
		}
	}
	if c.batEntries*8 > c.batLength {
		return o.ferr(VHDX, "region table", "length", vhdxRegionOffsets[0], c.batLength,
			"of the BAT region holds %d entries; the disk needs %d", c.batLength/8, c.batEntries)
	}
	if o.pastEOF(c.batOffset, c.batEntries*8) {
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf(
			"the BAT (%d entries at offset %d) runs past the end of the file (%d bytes)", c.batEntries, c.batOffset, o.size)})
	}
	limit := o.size
	if !o.sizeKnown {
		limit = math.MaxInt64
	}
	c.bat = newVHDTable(o.r, c.batOffset, c.batEntries, 8, false, VHDX, "BAT", limit)
	return nil
}

func (c *vhdxCore) size() int64 { return c.virtual }

func (c *vhdxCore) findings() []Finding { return c.finds }

func (c *vhdxCore) describe(info *Info) {
	info.ClusterSize = c.blockSize
	info.DirtyFlag = c.dirty
	if c.hasParent {
		info.BackingFilename = c.parentRef
		info.BackingFormat = string(VHDX)
	}
	h := &c.headers[c.cur]
	vi := VHDXInfo{
		Creator:              c.creator,
		BlockSize:            c.blockSize,
		LogicalSectorSize:    c.logical,
		PhysicalSectorSize:   c.physical,
		LeaveBlocksAllocated: c.leaveAlloc,
		HasParent:            c.hasParent,
		ChunkRatio:           c.chunkRatio,
		DiskID:               vhdxFormatGUID(c.page83),
		ParentLocator:        c.locEntries,
		CurrentHeader:        c.cur + 1,
		HeaderSequences:      [2]uint64{c.headers[0].seq, c.headers[1].seq},
		FileWriteGUID:        vhdxFormatGUID(h.fileWrite),
		DataWriteGUID:        vhdxFormatGUID(h.dataWrite),
		LogGUID:              vhdxFormatGUID(h.logGUID),
		LogOffset:            c.logOffset,
		LogLength:            c.logLength,
		LogPresent:           c.logPresent,
		LogNeedsReplay:       c.dirty,
		BATOffset:            c.batOffset,
		BATLength:            c.batLength,
		MetadataOffset:       c.metaOffset,
		MetadataLength:       c.metaLength,
	}
	if c.hasParent {
		vi.ParentLocatorType = vhdxFormatGUID(c.locType)
	}
	info.FormatSpecific = &FormatSpecific{Type: VHDX, Data: vi}
}

// vhdxMergeBlocks bounds how many BAT entries one lookup merges into a run.
const vhdxMergeBlocks = 4096

// batIndex is the BAT entry of payload block i (a sector bitmap entry follows every
// chunk-ratio payload entries).
func (c *vhdxCore) batIndex(i int64) int64 { return i + i/c.chunkRatio }

func vhdxKindOf(state uint64) (Kind, bool) {
	switch state {
	case vhdxNotPresent, vhdxUndefined, vhdxUnmapped, vhdxUnmappedV095:
		return KindHole, true
	case vhdxZero:
		return KindZero, true
	case vhdxFullyPresent:
		return KindData, true
	}
	return 0, false
}

func (c *vhdxCore) lookup(off int64) (segment, error) {
	if c.dirty {
		return segment{}, fmt.Errorf("vhdx: the image contains a log that needs to be replayed (%s); run qemu-img check -r all on a copy to replay it: %w",
			c.dirtyWhy, ErrUnsupported)
	}
	if c.hasParent {
		return segment{}, fmt.Errorf("vhdx: differencing disk: reading it needs its parent %q, which glimpse does not follow (qemu cannot read it either): %w",
			c.parentRef, ErrUnsupported)
	}
	bs := c.blockSize
	blk := off / bs
	within := off - blk*bs
	idx := c.batIndex(blk)
	e, err := c.bat.get(idx)
	if err != nil {
		return segment{}, err
	}
	state := e & 7
	kind, ok := vhdxKindOf(state)
	if !ok {
		what := "an unknown state"
		if state == vhdxPartiallyPresent {
			what = "PARTIALLY_PRESENT, which only a differencing disk may use"
		}
		return segment{}, ferr(VHDX, "BAT", "", c.batOffset+8*idx, state, "payload block %d is in %s", blk, what)
	}
	n := bs - within
	fileOff := int64(e>>20) << 20
	if kind == KindData && fileOff < vhdxHeaderSection {
		return segment{}, ferr(VHDX, "BAT", "", c.batOffset+8*idx, fileOff,
			"payload block %d is FULLY_PRESENT at a file offset inside the header section", blk)
	}
	// Merge the following blocks of the same kind (for data: contiguous in the file).
	for next := blk + 1; next < c.dataBlocks && next-blk < vhdxMergeBlocks && off+n < c.virtual; next++ {
		v, err := c.bat.get(c.batIndex(next))
		if err != nil {
			break
		}
		k, ok := vhdxKindOf(v & 7)
		if !ok || k != kind || kind == KindData && int64(v>>20)<<20 != fileOff+(next-blk)*bs {
			break
		}
		n += bs
	}
	if kind != KindData {
		return segment{kind: kind, length: n, host: -1}, nil
	}
	return vhdSparse(c.file, segment{kind: KindData, length: n, r: c.r, off: fileOff + within, host: fileOff + within}), nil
}

// vhdxReadZeroFill fills buf from off, zeros past the end of the file (as qemu reads the
// log); other errors pass through.
func vhdxReadZeroFill(r io.ReaderAt, buf []byte, off int64) error {
	got, err := r.ReadAt(buf, off)
	if got < len(buf) && err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	clear(buf[got:])
	return nil
}
