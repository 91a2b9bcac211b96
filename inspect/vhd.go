package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"strings"
	"sync"
	"time"
	"unicode/utf16"
)

// VHD (Microsoft Virtual PC / Virtual Server / Hyper-V "Virtual Hard Disk", qemu's vpc
// driver), after the "Virtual Hard Disk Image Format Specification" v1.0 (2006). All fields
// are big-endian.
//
// A fixed disk is the guest disk followed by a 512-byte footer. A dynamic disk starts with
// a copy of the footer, then a 1024-byte dynamic disk header ("cxsparse") that locates the
// block allocation table (BAT); each allocated block is a sector bitmap (one bit per
// 512-byte sector, padded to 512 bytes) followed by the block's data; the footer ends the
// file. A differencing disk is a dynamic disk whose header names a parent (UUID, UTF-16BE
// name, up to 8 platform-specific locators); its bitmap says which sectors it holds itself.
//
// glimpse follows qemu 7.2 (block/vpc.c) wherever qemu decides what a guest sees:
//
//   - The footer is the copy at offset 0 when the file starts with "conectix"; qemu then
//     always parses the dynamic header, whatever the footer's disk type. Otherwise it is
//     the 512 bytes at the end of the file, where qemu's length is rounded up to whole
//     sectors (bytes past the end read as zeros), and must say "fixed". A bad footer
//     checksum fails the open.
//   - Reads go through the BAT unless the footer's disk type is fixed (2); a fixed disk
//     reads the file itself from offset 0, zeros past its end.
//   - Sector bitmaps are ignored when reading a dynamic disk: an allocated block reads
//     entirely from the file, an unallocated one as zeros. Only a differencing disk, which
//     qemu reads as if it had no parent, consults them (glimpse follows the parent).
//   - The virtual size: see vhdVirtualSize.

// VHDInfo is the format-specific detail of a vhd image.
type VHDInfo struct {
	DiskType       string      `json:"disk-type"` // fixed, dynamic, differencing, or unknown(N)
	CreatorApp     string      `json:"creator-app"`
	CreatorVersion string      `json:"creator-version"` // major.minor
	CreatorHostOS  string      `json:"creator-host-os"`
	Features       uint32      `json:"features"`
	FormatVersion  string      `json:"format-version"`
	Timestamp      time.Time   `json:"timestamp"`
	OriginalSize   int64       `json:"original-size"`
	CurrentSize    int64       `json:"current-size"`
	Geometry       VHDGeometry `json:"geometry"`
	// SizeFrom says how the virtual size was derived, as qemu derives it: "chs" or
	// "current-size".
	SizeFrom   string `json:"size-from"`
	UUID       string `json:"uuid"`
	SavedState bool   `json:"saved-state"`
	// FooterAt is the offset of the footer glimpse used: 0 (the copy at the start of a
	// dynamic disk) or the end of the file.
	FooterAt int64 `json:"footer-offset"`

	// Dynamic and differencing disks.
	HeaderOffset    int64              `json:"header-offset,omitempty"`
	TableOffset     int64              `json:"table-offset,omitempty"`
	MaxTableEntries uint32             `json:"max-table-entries,omitempty"`
	BlockSize       int64              `json:"block-size,omitempty"`
	ParentUUID      string             `json:"parent-uuid,omitempty"`
	ParentTimestamp *time.Time         `json:"parent-timestamp,omitempty"`
	ParentName      string             `json:"parent-name,omitempty"`
	ParentLocators  []VHDParentLocator `json:"parent-locators,omitempty"`
}

// VHDGeometry is the footer's CHS geometry.
type VHDGeometry struct {
	Cylinders       uint16 `json:"cylinders"`
	Heads           uint8  `json:"heads"`
	SectorsPerTrack uint8  `json:"sectors-per-track"`
}

// VHDParentLocator is one parent locator entry of a differencing disk.
type VHDParentLocator struct {
	Platform   string `json:"platform"` // W2ru, W2ku, Wi2r, Wi2k, Mac, MacX, or the code in hex
	DataSpace  uint32 `json:"data-space"`
	DataLength uint32 `json:"data-length"`
	DataOffset int64  `json:"data-offset"`
	// Path is the locator decoded (UTF-16LE for W2ru/W2ku, a file URL for MacX); empty
	// when it could not be read or is not text (Mac aliases).
	Path string `json:"path,omitempty"`
}

const (
	vhdSector       = 512
	vhdFooterSize   = 512
	vhdHeaderSize   = 1024
	vhdFixed        = 2
	vhdDynamic      = 3
	vhdDifferencing = 4
	vhdUnallocated  = 0xFFFFFFFF
	// vhdMaxSectors is qemu's limit (2040 GiB): a larger disk fails to open with EFBIG.
	vhdMaxSectors = 0xff000000
	// vhdMaxGeometry is 65535 x 16 x 255 sectors, the largest CHS geometry: images this
	// large record their size in current_size only.
	vhdMaxGeometry = 65535 * 16 * 255
	// vhdMaxTableEntries is qemu's bound (INT_MAX / 4): more entries fail to open.
	vhdMaxTableEntries = 0x7fffffff / 4
	// vhdMaxLocatorData bounds a parent locator's data: 2048 UTF-16 units, far beyond the
	// paths Windows tools write (MAX_PATH is 260), and small enough for the stream inspector.
	vhdMaxLocatorData = 4 << 10
	// vhdTimeBase is the VHD epoch, 2000-01-01 00:00:00 UTC, in Unix seconds.
	vhdTimeBase = 946684800
)

var (
	vhdCookie    = []byte("conectix")
	vhdDynCookie = []byte("cxsparse")
)

// vhdFooter is the 512-byte hard disk footer.
type vhdFooter struct {
	raw          []byte
	features     uint32
	version      uint32
	dataOffset   uint64
	timestamp    uint32
	creatorApp   [4]byte
	creatorMajor uint16
	creatorMinor uint16
	creatorOS    [4]byte
	origSize     uint64
	curSize      uint64
	cylinders    uint16
	heads        uint8
	spt          uint8
	diskType     uint32
	checksum     uint32
	uuid         [16]byte
	savedState   uint8
}

func parseVHDFooter(b []byte) vhdFooter {
	f := vhdFooter{raw: b}
	f.features = binary.BigEndian.Uint32(b[8:])
	f.version = binary.BigEndian.Uint32(b[12:])
	f.dataOffset = binary.BigEndian.Uint64(b[16:])
	f.timestamp = binary.BigEndian.Uint32(b[24:])
	copy(f.creatorApp[:], b[28:32])
	f.creatorMajor = binary.BigEndian.Uint16(b[32:])
	f.creatorMinor = binary.BigEndian.Uint16(b[34:])
	copy(f.creatorOS[:], b[36:40])
	f.origSize = binary.BigEndian.Uint64(b[40:])
	f.curSize = binary.BigEndian.Uint64(b[48:])
	f.cylinders = binary.BigEndian.Uint16(b[56:])
	f.heads = b[58]
	f.spt = b[59]
	f.diskType = binary.BigEndian.Uint32(b[60:])
	f.checksum = binary.BigEndian.Uint32(b[64:])
	copy(f.uuid[:], b[68:84])
	f.savedState = b[84]
	return f
}

// vhdChecksum is the one's complement of the byte sum of b, with the 4-byte checksum field
// at skip counted as zero.
func vhdChecksum(b []byte, skip int) uint32 {
	var sum uint32
	for i, c := range b {
		if i >= skip && i < skip+4 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}

// vhdValidFooter reports whether b (512 bytes) is a footer with a correct checksum.
func vhdValidFooter(b []byte) bool {
	return len(b) == vhdFooterSize && bytes.Equal(b[:8], vhdCookie) &&
		vhdChecksum(b, 64) == binary.BigEndian.Uint32(b[64:])
}

// vhdTailFooterOffset is where qemu looks for the footer of a file that does not start
// with one: the last 512 bytes of the file's length rounded up to whole sectors.
func vhdTailFooterOffset(size int64) int64 { return alignUp(size, vhdSector) - vhdFooterSize }

// probeVHD: "conectix" at offset 0 (the footer copy of a dynamic or differencing disk, what
// qemu probes), or a footer with a valid checksum at the end (a fixed disk, which qemu does
// not probe, but which is a vhd all the same).
func probeVHD(p *probeData) bool {
	if b := p.at(0, 8); b != nil && bytes.Equal(b, vhdCookie) {
		return true
	}
	if p.size == unknownSize || p.size < vhdFooterSize {
		return false
	}
	off := vhdTailFooterOffset(p.size)
	n := min(int64(vhdFooterSize), p.size-off)
	b := p.at(off, n)
	if b == nil {
		return false
	}
	var f [vhdFooterSize]byte
	copy(f[:], b)
	return vhdValidFooter(f[:])
}

// vhdDynHeader is the 1024-byte dynamic disk header.
type vhdDynHeader struct {
	raw             []byte
	dataOffset      uint64
	tableOffset     uint64
	version         uint32
	maxEntries      uint32
	blockSize       uint32
	checksum        uint32
	parentUUID      [16]byte
	parentTimestamp uint32
	parentName      string
	locators        [8]vhdLocatorEntry
}

type vhdLocatorEntry struct {
	code   uint32
	space  uint32
	length uint32
	offset uint64
}

func parseVHDDynHeader(b []byte) vhdDynHeader {
	h := vhdDynHeader{raw: b}
	h.dataOffset = binary.BigEndian.Uint64(b[8:])
	h.tableOffset = binary.BigEndian.Uint64(b[16:])
	h.version = binary.BigEndian.Uint32(b[24:])
	h.maxEntries = binary.BigEndian.Uint32(b[28:])
	h.blockSize = binary.BigEndian.Uint32(b[32:])
	h.checksum = binary.BigEndian.Uint32(b[36:])
	copy(h.parentUUID[:], b[40:56])
	h.parentTimestamp = binary.BigEndian.Uint32(b[56:])
	h.parentName = vhdDecodeUTF16(b[64:576], true)
	for i := range h.locators {
		e := b[576+24*i:]
		h.locators[i] = vhdLocatorEntry{
			code:   binary.BigEndian.Uint32(e),
			space:  binary.BigEndian.Uint32(e[4:]),
			length: binary.BigEndian.Uint32(e[8:]),
			offset: binary.BigEndian.Uint64(e[16:]),
		}
	}
	return h
}

// vhdDecodeUTF16 decodes UTF-16 (big- or little-endian) up to the first NUL.
func vhdDecodeUTF16(b []byte, bigEndian bool) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		var c uint16
		if bigEndian {
			c = binary.BigEndian.Uint16(b[i:])
		} else {
			c = binary.LittleEndian.Uint16(b[i:])
		}
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// Parent locator platform codes.
const (
	vhdPlatWi2r = 0x57693272 // deprecated: relative path
	vhdPlatWi2k = 0x5769326B // deprecated: absolute path
	vhdPlatW2ru = 0x57327275 // UTF-16LE relative path
	vhdPlatW2ku = 0x57326B75 // UTF-16LE absolute path
	vhdPlatMac  = 0x4D616320 // Mac OS alias (binary)
	vhdPlatMacX = 0x4D616358 // UTF-8 file URL
)

func vhdPlatformName(code uint32) string {
	switch code {
	case vhdPlatWi2r:
		return "Wi2r"
	case vhdPlatWi2k:
		return "Wi2k"
	case vhdPlatW2ru:
		return "W2ru"
	case vhdPlatW2ku:
		return "W2ku"
	case vhdPlatMac:
		return "Mac"
	case vhdPlatMacX:
		return "MacX"
	}
	return fmt.Sprintf("0x%08x", code)
}

func vhdDiskTypeName(t uint32) string {
	switch t {
	case vhdFixed:
		return "fixed"
	case vhdDynamic:
		return "dynamic"
	case vhdDifferencing:
		return "differencing"
	}
	return fmt.Sprintf("unknown(%d)", t)
}

// vhdVirtualSize is the virtual size as qemu 7.2 computes it (vpc_open). Virtual PC sizes a
// disk by its CHS geometry (cylinders x heads x sectors per track, which usually rounds the
// size down), Hyper-V and most later tools by the footer's current_size. qemu picks by the
// creator application, compared as exactly 4 bytes:
//
//	"win " (Hyper-V), "qem2" (qemu with force_size=on), "d2v " (Disk2vhd),
//	"CTXS" (XenConverter), "tap\0" (XenServer)   -> current_size
//	anything else ("vpc ", "qemu", "vs  ", "vbox", …) -> CHS geometry
//
// except that a disk whose geometry is the maximum, 65535 x 16 x 255, always uses
// current_size (it cannot express its size in CHS: Disk2vhd writes "d2v\0", not "d2v ", and
// is sized this way). current_size counts whole 512-byte sectors (qemu drops a remainder).
// Checked against qemu-img 7.2 on every fixture and on crafted footers (vhd_test.go):
// virtualpc-dynamic.vhd ("vpc ") gives CHS 136363130880, hyperv2012r2-dynamic.vhd ("win ")
// current_size 136365211648, d2v-zerofilled.vhd current_size 263454720.
func vhdVirtualSize(f *vhdFooter) (size int64, fromCHS bool) {
	chs := int64(f.cylinders) * int64(f.heads) * int64(f.spt)
	app := string(f.creatorApp[:])
	useCHS := app != "win " && app != "qem2" && app != "d2v " && app != "CTXS" && app != "tap\x00"
	if !useCHS || chs == vhdMaxGeometry {
		sectors := f.curSize / vhdSector
		if sectors > vhdMaxSectors {
			return int64(vhdMaxSectors+1) * vhdSector, false // caller rejects it
		}
		return int64(sectors) * vhdSector, false
	}
	return chs * vhdSector, true
}

// vhdCore is an opened vhd.
type vhdCore struct {
	r         io.ReaderAt
	file      *os.File // r, when it is a plain file: holes come from SEEK_DATA/SEEK_HOLE
	fileSize  int64
	sizeKnown bool

	footer    vhdFooter
	footerAt  int64 // 0, or the offset of the footer at the end
	virtual   int64
	fromCHS   bool
	hasHeader bool // the footer copy at 0 and a dynamic header were found
	hdrOffset int64
	hdr       vhdDynHeader
	hdrSumOK  bool

	blockSize  int64
	bitmapSize int64
	entries    int64
	batOffset  int64
	bat        *vhdTable

	locators  []VHDParentLocator
	parentRef string // the name used to open the parent, or describe it
	parent    *disk
	parentErr error
	finds     []Finding

	bmMu    sync.Mutex
	bmBlock int64 // block whose bitmap is in bmBuf; -1 for none
	bmBuf   []byte
}

func (c *vhdCore) differencing() bool { return c.footer.diskType == vhdDifferencing }

// passthrough reports whether reads go straight to the file (qemu: footer type fixed).
func (c *vhdCore) passthrough() bool { return c.footer.diskType == vhdFixed }

func openVHD(o *opener) (core, error) {
	c := &vhdCore{r: o.r, fileSize: o.size, sizeKnown: o.sizeKnown, bmBlock: -1}
	c.file, _ = o.r.(*os.File)
	head, err := readAt(o.r, 0, min(8, o.size), VHD, "footer")
	if err != nil {
		return nil, err
	}
	if bytes.Equal(head, vhdCookie) {
		b, err := readAt(o.r, 0, vhdFooterSize, VHD, "footer")
		if err != nil {
			return nil, err
		}
		c.footer = parseVHDFooter(b)
		c.footerAt = 0
	} else {
		if !o.sizeKnown {
			return nil, wrongFormat(VHD, "no footer copy at offset 0, and the footer of a fixed disk, at the end, is not known until the whole file has been seen")
		}
		if o.size < vhdFooterSize {
			return nil, wrongFormat(VHD, "no footer")
		}
		off := vhdTailFooterOffset(o.size)
		n := min(int64(vhdFooterSize), o.size-off)
		b, err := readAt(o.r, off, n, VHD, "footer")
		if err != nil {
			return nil, err
		}
		full := make([]byte, vhdFooterSize) // qemu reads past the end as zeros
		copy(full, b)
		if !bytes.Equal(full[:8], vhdCookie) {
			return nil, wrongFormat(VHD, "no \"conectix\" footer at the start or the end")
		}
		c.footer = parseVHDFooter(full)
		c.footerAt = off
	}
	f := &c.footer
	if sum := vhdChecksum(f.raw, 64); sum != f.checksum {
		return nil, o.ferr(VHD, "footer", "checksum", c.footerAt+64, fmt.Sprintf("0x%08x", f.checksum),
			"does not match the footer's contents (0x%08x)", sum)
	}
	c.virtual, c.fromCHS = vhdVirtualSize(f)
	if c.virtual > vhdMaxSectors*vhdSector {
		return nil, o.ferr(VHD, "footer", "current_size", c.footerAt+48, f.curSize,
			"exceeds the largest vhd qemu opens (2040 GiB)")
	}
	switch {
	case c.footerAt == 0:
		if err := c.openHeader(o); err != nil {
			return nil, err
		}
	case f.diskType != vhdFixed:
		// qemu: "invalid VPC image"; only a fixed disk has no footer copy at 0.
		return nil, o.ferr(VHD, "footer", "disk_type", c.footerAt+60, f.diskType,
			"(%s) needs a footer copy and a dynamic header at the start of the file; only a fixed disk has its footer at the end alone",
			vhdDiskTypeName(f.diskType))
	case o.sizeKnown && c.virtual > c.footerAt:
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf(
			"fixed disk of %d bytes, but the file holds only %d bytes of data before its footer", c.virtual, c.footerAt)})
	}
	if c.footerAt == 0 && f.diskType == vhdFixed {
		c.finds = append(c.finds, Finding{FindMalformed,
			"the footer says fixed disk, but the file starts with a footer copy and a dynamic header: qemu reads the whole file, headers included, as the guest disk"})
	}
	if f.diskType != vhdFixed && f.diskType != vhdDynamic && f.diskType != vhdDifferencing {
		c.finds = append(c.finds, Finding{FindMalformed, fmt.Sprintf("unknown disk type %d (qemu reads it as a dynamic disk)", f.diskType)})
	}
	if c.differencing() {
		c.openParent(o)
	}
	return c, nil
}

// openHeader parses the dynamic disk header and its parent locators (never the BAT).
func (c *vhdCore) openHeader(o *opener) error {
	f := &c.footer
	if f.dataOffset > uint64(math.MaxInt64) {
		return o.ferr(VHD, "footer", "data_offset", 16, f.dataOffset, "is not a file offset")
	}
	c.hdrOffset = int64(f.dataOffset)
	if o.sizeKnown && c.hdrOffset >= o.size {
		return o.ferr(VHD, "footer", "data_offset", 16, f.dataOffset,
			"places the dynamic disk header past the end of the file (%d bytes)", o.size)
	}
	// qemu reads what there is and zeros past the end of the file.
	b, err := vhdReadZeroFill(o.r, c.hdrOffset, vhdHeaderSize, "dynamic disk header")
	if err != nil {
		return err
	}
	if o.pastEOF(c.hdrOffset, vhdHeaderSize) {
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf(
			"the dynamic disk header at offset %d runs past the end of the file (%d bytes)", c.hdrOffset, o.size)})
	}
	if !bytes.Equal(b[:8], vhdDynCookie) {
		return o.ferr(VHD, "dynamic disk header", "cookie", c.hdrOffset, fmt.Sprintf("%q", b[:8]), "is not \"cxsparse\"")
	}
	c.hdr = parseVHDDynHeader(b)
	c.hasHeader = true
	h := &c.hdr
	c.hdrSumOK = vhdChecksum(b, 36) == h.checksum
	if !c.hdrSumOK {
		c.finds = append(c.finds, Finding{FindCorrupt, fmt.Sprintf(
			"dynamic disk header checksum 0x%08x at offset %d does not match its contents (0x%08x)",
			h.checksum, c.hdrOffset+36, vhdChecksum(b, 36))})
	}
	// The checks qemu makes, in its order, each with qemu's reason.
	bs := int64(h.blockSize)
	if bs < vhdSector || bs&(bs-1) != 0 {
		return o.ferr(VHD, "dynamic disk header", "block_size", c.hdrOffset+32, h.blockSize,
			"is not a power of two of at least 512 bytes")
	}
	c.blockSize = bs
	c.bitmapSize = alignUp(bs/(8*vhdSector), vhdSector)
	if c.virtual/bs > 0xffffffff {
		return o.ferr(VHD, "dynamic disk header", "block_size", c.hdrOffset+32, h.blockSize,
			"is too small for the disk: more than 2^32 blocks")
	}
	if covered, ok := mul64(int64(h.maxEntries), bs); !ok || covered < c.virtual {
		return o.ferr(VHD, "dynamic disk header", "max_table_entries", c.hdrOffset+28, h.maxEntries,
			"blocks of %d bytes do not cover the disk's %d bytes", bs, c.virtual)
	}
	if h.maxEntries > vhdMaxTableEntries {
		return o.ferr(VHD, "dynamic disk header", "max_table_entries", c.hdrOffset+28, h.maxEntries,
			"is too large (qemu's limit is %d entries)", vhdMaxTableEntries)
	}
	c.entries = int64(h.maxEntries)
	if h.tableOffset > uint64(math.MaxInt64) {
		return o.ferr(VHD, "dynamic disk header", "table_offset", c.hdrOffset+16, h.tableOffset, "is not a file offset")
	}
	c.batOffset = int64(h.tableOffset)
	batBytes := c.entries * 4
	if end, ok := add64(c.batOffset, batBytes); !ok || end > math.MaxInt64-vhdSector {
		return o.ferr(VHD, "dynamic disk header", "table_offset", c.hdrOffset+16, h.tableOffset, "places the BAT beyond any file")
	}
	if o.pastEOF(c.batOffset, batBytes) {
		c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf(
			"the BAT (%d entries at offset %d) runs past the end of the file (%d bytes)", c.entries, c.batOffset, o.size)})
	}
	tableLimit := o.size
	if !o.sizeKnown {
		tableLimit = math.MaxInt64
	}
	c.bat = newVHDTable(o.r, c.batOffset, c.entries, 4, true, VHD, "BAT", tableLimit)

	// Parent locators: decoded for every disk type (a dynamic disk should have none).
	for i, e := range h.locators {
		if e.code == 0 {
			continue
		}
		loc := VHDParentLocator{Platform: vhdPlatformName(e.code), DataSpace: e.space, DataLength: e.length}
		entryOff := c.hdrOffset + 576 + int64(24*i)
		if e.offset > uint64(math.MaxInt64) {
			c.finds = append(c.finds, Finding{FindMalformed, fmt.Sprintf("parent locator %d at offset %d: data offset %d is not a file offset", i, entryOff, e.offset)})
			c.locators = append(c.locators, loc)
			continue
		}
		loc.DataOffset = int64(e.offset)
		switch {
		case e.length == 0:
		case e.length > vhdMaxLocatorData:
			c.finds = append(c.finds, Finding{FindTooLarge, fmt.Sprintf(
				"parent locator %d at offset %d: data length %d is longer than glimpse reads (%d bytes)", i, entryOff, e.length, vhdMaxLocatorData)})
		case o.pastEOF(loc.DataOffset, int64(e.length)):
			c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf(
				"parent locator %d (%s) points past the end of the file: %d bytes at offset %d", i, loc.Platform, e.length, e.offset)})
		default:
			data, err := readAt(o.r, loc.DataOffset, int64(e.length), VHD, "parent locator data")
			if err != nil {
				return err
			}
			loc.Path = vhdDecodeLocator(e.code, data)
		}
		c.locators = append(c.locators, loc)
	}
	return nil
}

// vhdDecodeLocator decodes a locator's data into a path ("" for binary Mac aliases).
func vhdDecodeLocator(code uint32, data []byte) string {
	switch code {
	case vhdPlatW2ru, vhdPlatW2ku:
		return vhdDecodeUTF16(data, false)
	case vhdPlatMacX, vhdPlatWi2r, vhdPlatWi2k:
		return strings.ToValidUTF8(cstring(data), "\uFFFD")
	}
	return ""
}

// vhdLocalRef turns a locator path into a name relative to the image's directory, or ""
// when it is not one (absolute, drive-qualified, URL, or leaving the directory).
func vhdLocalRef(p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, ":") {
		return ""
	}
	p = path.Clean(p)
	if p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return ""
	}
	return p
}

// openParent records the parent of a differencing disk and, when allowed, opens it.
func (c *vhdCore) openParent(o *opener) {
	// Candidates, best first: relative locators, then the parent's name when it is a plain
	// name. Absolute paths are described but never followed.
	var candidates []string
	describe := ""
	for _, l := range c.locators {
		if (l.Platform == "W2ru" || l.Platform == "Wi2r") && l.Path != "" {
			if ref := vhdLocalRef(l.Path); ref != "" {
				candidates = append(candidates, ref)
			}
			if describe == "" {
				describe = l.Path
			}
		}
	}
	if ref := vhdLocalRef(c.hdr.parentName); ref != "" && !strings.Contains(ref, "/") {
		candidates = append(candidates, ref)
	}
	if describe == "" {
		for _, l := range c.locators {
			if l.Path != "" {
				describe = l.Path
				break
			}
		}
	}
	if describe == "" {
		describe = c.hdr.parentName
	}
	if len(candidates) > 0 {
		c.parentRef = candidates[0]
	} else {
		c.parentRef = describe
	}
	msg := "differencing disk: its contents depend on a parent image"
	if describe != "" {
		msg += fmt.Sprintf(" (%q)", describe)
	}
	if !c.hasHeader {
		msg += ", but the file has no dynamic header to name it"
	}
	c.finds = append(c.finds, Finding{FindBackingFile, msg})

	switch {
	case !c.hasHeader:
		c.parentErr = fmt.Errorf("vhd: differencing disk without a dynamic header: %w", ErrUnsupported)
		return
	case !o.opt.AllowBacking:
		c.parentErr = fmt.Errorf("vhd: differencing disk: reading it needs its parent %q (allow backing files to follow it): %w", describe, ErrNotAllowed)
		return
	case len(candidates) == 0:
		c.parentErr = fmt.Errorf("vhd: differencing disk: parent %q has no relative locator that names a file in the image's directory: %w", describe, ErrNotAllowed)
		return
	}
	var firstErr error
	for _, ref := range candidates {
		p, err := o.openRelatedImage(ref, VHD, "parent")
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		pc, ok := p.c.(*vhdCore)
		if ok && pc.footer.uuid != c.hdr.parentUUID {
			firstErr = o.ferr(VHD, "dynamic disk header", "parent_uuid", c.hdrOffset+40, vhdFormatUUID(c.hdr.parentUUID),
				"does not match the UUID of parent %q (%s)", ref, vhdFormatUUID(pc.footer.uuid))
			continue
		}
		c.parent, c.parentRef = p, ref
		return
	}
	c.parentErr = firstErr
}

// vhdReadZeroFill reads n bytes at off, the part past the end of the file as zeros (as qemu
// reads metadata). Other errors pass through.
func vhdReadZeroFill(r io.ReaderAt, off, n int64, structure string) ([]byte, error) {
	if n < 0 || n > maxMetadataRead || off < 0 || off > math.MaxInt64-n {
		return nil, ferr(VHD, structure, "", off, n, "size or offset out of range")
	}
	buf := make([]byte, n)
	got, err := r.ReadAt(buf, off)
	if got < len(buf) && err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	clear(buf[got:])
	return buf, nil
}

func vhdFormatUUID(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

func vhdTime(t uint32) time.Time { return time.Unix(vhdTimeBase+int64(t), 0).UTC() }

func (c *vhdCore) size() int64 { return c.virtual }

func (c *vhdCore) findings() []Finding { return c.finds }

func (c *vhdCore) describe(info *Info) {
	f := &c.footer
	if !c.passthrough() {
		info.ClusterSize = c.blockSize // qemu: block_size for every non-fixed disk
	}
	if c.differencing() {
		info.BackingFilename = c.parentRef
		info.BackingFormat = string(VHD)
	}
	vi := VHDInfo{
		DiskType:       vhdDiskTypeName(f.diskType),
		CreatorApp:     strings.ToValidUTF8(string(f.creatorApp[:]), "\uFFFD"),
		CreatorVersion: fmt.Sprintf("%d.%d", f.creatorMajor, f.creatorMinor),
		CreatorHostOS:  strings.ToValidUTF8(string(f.creatorOS[:]), "\uFFFD"),
		Features:       f.features,
		FormatVersion:  fmt.Sprintf("%d.%d", f.version>>16, f.version&0xffff),
		Timestamp:      vhdTime(f.timestamp),
		OriginalSize:   int64(min(f.origSize, uint64(math.MaxInt64))),
		CurrentSize:    int64(min(f.curSize, uint64(math.MaxInt64))),
		Geometry:       VHDGeometry{f.cylinders, f.heads, f.spt},
		SizeFrom:       "current-size",
		UUID:           vhdFormatUUID(f.uuid),
		SavedState:     f.savedState != 0,
		FooterAt:       c.footerAt,
	}
	if c.fromCHS {
		vi.SizeFrom = "chs"
	}
	if c.hasHeader {
		h := &c.hdr
		vi.HeaderOffset = c.hdrOffset
		vi.TableOffset = c.batOffset
		vi.MaxTableEntries = h.maxEntries
		vi.BlockSize = c.blockSize
		if h.parentUUID != ([16]byte{}) {
			vi.ParentUUID = vhdFormatUUID(h.parentUUID)
		}
		if h.parentTimestamp != 0 {
			t := vhdTime(h.parentTimestamp)
			vi.ParentTimestamp = &t
		}
		vi.ParentName = h.parentName
		vi.ParentLocators = c.locators
	}
	info.FormatSpecific = &FormatSpecific{Type: VHD, Data: vi}
}

// vhdHoleScan bounds how many unallocated BAT entries one lookup merges into a run.
const vhdHoleScan = 1 << 14

func (c *vhdCore) lookup(off int64) (segment, error) {
	if c.passthrough() {
		end := c.virtual
		if c.sizeKnown {
			end = min(end, c.fileSize)
		}
		if off >= end {
			return segment{kind: KindHole, length: c.virtual - off, host: -1}, nil
		}
		// qemu reads a fixed disk through the file, and so maps its holes as zeros.
		return vhdSparse(c.file, segment{kind: KindData, length: end - off, r: c.r, off: off, host: off}), nil
	}
	bs := c.blockSize
	blk := off / bs
	within := off - blk*bs
	if blk >= c.entries { // cannot happen after qemu's "page table too small" check
		return segment{kind: KindHole, length: c.virtual - off, host: -1}, nil
	}
	e, err := c.bat.get(blk)
	if err != nil {
		return segment{}, err
	}
	if e == vhdUnallocated {
		n := bs - within
		for next := blk + 1; next < c.entries && next-blk < vhdHoleScan && off+n < c.virtual; next++ {
			v, err := c.bat.get(next)
			if err != nil || v != vhdUnallocated {
				break
			}
			n += bs
		}
		if c.differencing() {
			return c.parentSegment(off, n)
		}
		return segment{kind: KindHole, length: n, host: -1}, nil
	}
	data := int64(e)*vhdSector + c.bitmapSize + within
	if !c.differencing() {
		// qemu reports an allocated block as data, holes in the file or not (map agrees).
		return segment{kind: KindData, length: bs - within, r: c.r, off: data, host: data}, nil
	}
	// A differencing disk holds the sectors whose bitmap bit is set (bit 7 of byte 0 is
	// the block's first sector); the others come from the parent.
	if c.bitmapSize == 0 {
		// qemu's bitmap size rounds down to nothing for blocks under 4 KiB
		return segment{}, ferr(VHD, "dynamic disk header", "block_size", c.hdrOffset+32, c.blockSize,
			"is too small for a differencing disk: no room for a sector bitmap")
	}
	sec := within / vhdSector
	secs := bs / vhdSector
	mine, run, err := c.bitmapRun(blk, int64(e)*vhdSector, sec, secs)
	if err != nil {
		return segment{}, err
	}
	n := run*vhdSector - within%vhdSector
	if mine {
		return segment{kind: KindData, length: n, r: c.r, off: data, host: data}, nil
	}
	return c.parentSegment(off, n)
}

// vhdSparse refines a data segment stored in a plain file by the file's holes, which read
// as zeros: a hole at its start becomes a zero run (KindZero, as raw reports holes), data
// followed by a hole is cut where the hole starts. The bytes read are the same; a converter
// just need not read them. qemu does the same for a fixed vhd (its block status recurses
// into the file); for vhdx, whose driver has no block status at all, it is glimpse's own.
// vhd.go and vhdx.go share it.
func vhdSparse(f *os.File, s segment) segment {
	if f == nil || s.kind != KindData {
		return s
	}
	data, hole, ok := seekDataHole(f, s.host)
	switch {
	case !ok:
		return s
	case data > s.host:
		return segment{kind: KindZero, length: min(data-s.host, s.length), host: -1}
	case data < s.host: // past the end of the file
		return segment{kind: KindZero, length: s.length, host: -1}
	case hole > s.host && hole < s.host+s.length:
		s.length = hole - s.host
	}
	return s
}

// bitmapRun reads block blk's sector bitmap (cached for the last block) and returns whether
// sector sec is in this file and how many sectors from sec on share that state.
func (c *vhdCore) bitmapRun(blk, bitmapOff, sec, secs int64) (bool, int64, error) {
	c.bmMu.Lock()
	defer c.bmMu.Unlock()
	if c.bmBlock != blk {
		if int64(cap(c.bmBuf)) < c.bitmapSize {
			c.bmBuf = make([]byte, c.bitmapSize)
		}
		c.bmBuf = c.bmBuf[:c.bitmapSize]
		n, err := c.r.ReadAt(c.bmBuf, bitmapOff)
		if n < len(c.bmBuf) {
			if err != nil && !errors.Is(err, io.EOF) {
				c.bmBlock = -1
				return false, 0, err
			}
			clear(c.bmBuf[n:]) // past the end of the file: nothing here, as Check reports
		}
		c.bmBlock = blk
	}
	bit := func(s int64) bool { return c.bmBuf[s/8]&(0x80>>(s%8)) != 0 }
	mine := bit(sec)
	end := sec + 1
	for end < secs && bit(end) == mine {
		end++
	}
	return mine, end - sec, nil
}

// parentSegment reads n bytes at off from the parent.
func (c *vhdCore) parentSegment(off, n int64) (segment, error) {
	if c.parent == nil {
		return segment{}, c.parentErr
	}
	if off >= c.parent.Size() {
		return segment{kind: KindHole, length: n, host: -1}, nil
	}
	s, err := c.parent.lookup(off)
	if err != nil {
		return segment{}, err
	}
	s.length = min(s.length, n)
	s.depth++
	return s, nil
}
