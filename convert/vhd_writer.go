package convert

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"glimpse/inspect"
)

// The vhd writer (qemu-img convert -O vpc), after Microsoft's "Virtual Hard Disk Image
// Format Specification" 1.0. All fields are big-endian.
//
// Options (-o), qemu's keys and spellings:
//
//	subformat=dynamic|fixed  dynamic (the default): a copy of the footer at 0, the dynamic
//	                 disk header at 512, the BAT at 1536, then the allocated blocks, then the
//	                 footer. fixed: the guest disk as it is, then the footer.
//	force_size=on    keep the source's exact size (see below)
//
// and glimpse's own, for reproducible output:
//
//	uuid=UUID        the footer's unique id (default: random; the null UUID is refused)
//	timestamp=T      the footer's time stamp, as Unix seconds (SOURCE_DATE_EPOCH's spelling)
//	                 or RFC 3339, from 2000-01-01 to 2136 (default: now)
//
// The virtual size. A vhd records its size twice: as a CHS geometry (cylinders × heads ×
// sectors per track, at most 65535 × 16 × 255) and as current_size in bytes. Readers
// disagree on which one counts: Virtual PC and qemu (for most creator applications, see
// inspect's vhd.go) use the geometry, Hyper-V, Azure and VirtualBox use current_size. So by
// default the writer does what qemu-img does: it grows the size until it is a whole
// geometry (the spec's geometry algorithm, qemu's calculate_geometry, tried on the sector
// count and then one sector more at a time) and writes that size as current_size too, so
// that every reader sees the same disk, possibly a little larger than the source (the
// extra sectors read as zeros). A disk too large for any geometry (over about 127 GiB)
// gets the largest one and its exact size in current_size, as qemu does.
//
// With force_size=on current_size is the source's size exactly (rounded up to a whole
// sector) and the creator application is "qem2", which tells qemu to use current_size
// (as "win " tells it for Hyper-V's disks); the geometry is the spec's for that size (the
// largest that fits, what Hyper-V writes), where qemu writes the maximum geometry. Azure
// wants exactly this: a fixed vhd whose size is a whole number of MiB, so that is the way
// to convert for Azure (round the raw image up to a MiB first).
//
// The creator application is "qemu" (or "qem2"), version 5.3, host "Wi2k", as qemu writes
// it. It is the only field readers use to decide how to size a disk, and qemu's spellings
// are the ones every reader already handles: with "qemu" the geometry and current_size
// agree, so every reader sees the same size; "qem2" is the only name that makes qemu trust
// current_size without claiming to be Hyper-V, Disk2vhd or XenServer. Hyper-V and Azure
// do not look at it (Azure's own instructions convert with qemu-img's force_size).
//
// Dynamic disks: 2 MiB blocks, each a 512-byte sector bitmap followed by the block's data.
// Blocks are placed as Windows places them: each block's data starts on a 4 KiB boundary of
// the file (its bitmap sits in the sector before), so that guest I/O is aligned on hosts
// with 4 KiB sectors; a block with any data has its bitmap all ones, as qemu writes it (qemu
// ignores bitmaps of dynamic disks; the zeros inside a block are holes in the file, which
// read as zeros either way). Zero blocks stay unallocated (BAT entry 0xFFFFFFFF). The
// writer is Ordered, so blocks are allocated in guest order and the same input and options
// give the same bytes; the BAT (4 bytes per 2 MiB, at most 4 MiB) is kept in memory and
// written in Commit with the header and both footers.
//
// Fixed disks: positional (chunks are written where they belong, concurrently), zero runs
// are holes, and Commit writes the footer after the last byte of the disk.
//
// The largest disk is 2040 GiB, the most qemu opens (Hyper-V's limit is 2040 GB too).

const (
	vhdwSector      = 512
	vhdwFooterSize  = 512
	vhdwHeaderSize  = 1024
	vhdwBATOffset   = vhdwFooterSize + vhdwHeaderSize
	vhdwBlockSize   = 2 << 20
	vhdwBitmapSize  = vhdwBlockSize / vhdwSector / 8 // 512: one sector
	vhdwDataAlign   = 4 << 10
	vhdwMaxSectors  = 0xff000000 // 2040 GiB, qemu's VHD_MAX_SECTORS
	vhdwMaxGeometry = 65535 * 16 * 255
	vhdwTimeBase    = 946684800 // 2000-01-01T00:00:00Z
	vhdwFixed       = 2
	vhdwDynamic     = 3
	vhdwUnallocated = 0xffffffff
)

// vhdConfig is what the options say.
type vhdConfig struct {
	name      string
	fixed     bool
	forceSize bool
	uuid      [16]byte
	timestamp uint32
	sync      bool
}

var vhdKeys = []string{"subformat", "force_size", "size", "uuid", "timestamp"}

func parseVHDOptions(name string, o FormatOptions, now time.Time) (vhdConfig, error) {
	cfg := vhdConfig{name: name, sync: o.Sync}
	used := map[string]bool{}
	bad := func(key, v, why string) error { return fmt.Errorf("vhd: -o %s=%s: %s", key, v, why) }
	if v, ok := o.take(used, "subformat"); ok {
		switch v {
		case "dynamic":
		case "fixed":
			cfg.fixed = true
		default:
			return cfg, bad("subformat", v, "want dynamic or fixed")
		}
	}
	if err := o.takeBool(used, "vhd", "force_size", &cfg.forceSize); err != nil {
		return cfg, err
	}
	if v, ok := o.take(used, "size"); ok {
		return cfg, bad("size", v, "the output's size is the source's (with force_size=on exactly, otherwise rounded up to a CHS geometry)")
	}
	u, _, err := vxUUIDOption(o, used, "vhd", "uuid")
	if err != nil {
		return cfg, err
	}
	cfg.uuid = u
	t := now
	if v, ok := o.take(used, "timestamp"); ok {
		if t, err = vxParseTime(v); err != nil {
			return cfg, bad("timestamp", v, err.Error())
		}
	}
	s := t.Unix() - vhdwTimeBase
	if s < 0 || s > 0xffffffff {
		return cfg, bad("timestamp", t.Format(time.RFC3339), "a vhd time stamp counts seconds from 2000-01-01 in 32 bits: it must lie between 2000 and 2136")
	}
	cfg.timestamp = uint32(s)
	if o.Compress {
		return cfg, fmt.Errorf("vhd images cannot be compressed (-c)")
	}
	if err := o.unknown(inspect.VHD, used, vhdKeys...); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func newVHDWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	cfg, err := parseVHDOptions(name, o, time.Now())
	if err != nil {
		return nil, err
	}
	rf, err := vxCreate("vhd", name, cfg.sync)
	if err != nil {
		return nil, err
	}
	if cfg.fixed {
		return &vhdFixedWriter{cfg: cfg, rf: rf, size: -1}, nil
	}
	return &vhdDynamicWriter{cfg: cfg, rf: rf, size: -1}, nil
}

// vhdGeometry is the spec's CHS geometry for a sector count (Appendix: CHS Calculation),
// the same as qemu's calculate_geometry: the largest geometry not above the count, with
// 17, 31, 63 or 255 sectors per track.
func vhdGeometry(sectors int64) (cyls uint16, heads, spt uint8) {
	sectors = min(sectors, vhdwMaxGeometry)
	var cth int64
	if sectors >= 65535*16*63 {
		spt, heads = 255, 16
		cth = sectors / 255
	} else {
		spt = 17
		cth = sectors / 17
		h := max((cth+1023)/1024, 4)
		if cth >= h*1024 || h > 16 {
			spt, h = 31, 16
			cth = sectors / 31
		}
		if cth >= h*1024 {
			spt, h = 63, 16
			cth = sectors / 63
		}
		heads = uint8(h)
	}
	return uint16(cth / int64(heads)), heads, spt
}

// vhdSizing is the footer's view of the disk's size.
type vhdSizing struct {
	current    int64 // current_size (and original_size), bytes
	cyls       uint16
	heads, spt uint8
	creator    string
}

// vhdSize works out current_size and the geometry for a disk of size bytes (see the
// file's comment).
func vhdSize(name string, size int64, force bool) (vhdSizing, error) {
	s := vhdSizing{creator: "qemu"}
	sectors := (size + vhdwSector - 1) / vhdwSector
	if size < 0 || sectors > vhdwMaxSectors {
		return s, fmt.Errorf("%s: a virtual size of %d bytes is more than a vhd holds (2040 GiB, the most qemu opens)", name, size)
	}
	if force {
		s.creator = "qem2"
		s.current = sectors * vhdwSector
		s.cyls, s.heads, s.spt = vhdGeometry(sectors)
		return s, nil
	}
	// qemu's loop: the geometry of the count, then of one sector more, until it holds the
	// disk. The geometry's granularity is at most 16 × 255 sectors, so it ends quickly.
	want := min(sectors, vhdwMaxGeometry)
	var c uint16
	var h, t uint8
	for i := int64(0); want > int64(c)*int64(h)*int64(t); i++ {
		if i > 1<<20 {
			return s, fmt.Errorf("%s: internal error: no CHS geometry holds %d sectors", name, sectors)
		}
		c, h, t = vhdGeometry(want + i)
	}
	s.cyls, s.heads, s.spt = c, h, t
	if chs := int64(c) * int64(h) * int64(t); chs == vhdwMaxGeometry {
		s.current = sectors * vhdwSector
	} else {
		s.current = chs * vhdwSector
	}
	return s, nil
}

// footer encodes the 512-byte hard disk footer.
func (cfg *vhdConfig) footer(s vhdSizing, diskType uint32, dataOffset uint64) []byte {
	b := make([]byte, vhdwFooterSize)
	be := binary.BigEndian
	copy(b[0:], "conectix")
	be.PutUint32(b[8:], 2)           // features: the reserved bit, always set
	be.PutUint32(b[12:], 0x00010000) // file format version 1.0
	be.PutUint64(b[16:], dataOffset)
	be.PutUint32(b[24:], cfg.timestamp)
	copy(b[28:32], s.creator)
	be.PutUint16(b[32:], 5) // creator version 5.3 (Virtual PC 2007), as qemu
	be.PutUint16(b[34:], 3)
	copy(b[36:40], "Wi2k")
	be.PutUint64(b[40:], uint64(s.current)) // original size
	be.PutUint64(b[48:], uint64(s.current))
	be.PutUint16(b[56:], s.cyls)
	b[58] = s.heads
	b[59] = s.spt
	be.PutUint32(b[60:], diskType)
	copy(b[68:84], cfg.uuid[:])
	be.PutUint32(b[64:], vhdwChecksum(b))
	return b
}

// vhdwChecksum is the one's complement of the byte sum (the checksum field, at 64 in a
// footer and 36 in a dynamic header, must be zero when it is computed).
func vhdwChecksum(b []byte) uint32 {
	var sum uint32
	for _, c := range b {
		sum += uint32(c)
	}
	return ^sum
}

// vhdFixedWriter writes a fixed vhd: the disk, then the footer.
type vhdFixedWriter struct {
	cfg  vhdConfig
	rf   *RawFile
	sz   vhdSizing
	size int64 // the source's size; -1 before Begin
}

var _ Writer = (*vhdFixedWriter)(nil)

func (w *vhdFixedWriter) Begin(size int64) (Layout, error) {
	sz, err := vhdSize(w.cfg.name, size, w.cfg.forceSize)
	if err != nil {
		return Layout{}, err
	}
	w.sz, w.size = sz, size
	return Layout{BlockSize: vhdwSector}, nil
}

// Write puts a data chunk where it is in the guest; zero chunks stay holes.
func (w *vhdFixedWriter) Write(c *Chunk) error {
	if err := vxCheckPositional(w.cfg.name, c, w.size); err != nil {
		return err
	}
	if c.Zero() {
		return nil
	}
	return vxWriteAt(w.rf, c.Data, c.Off)
}

// Commit writes the footer after the disk's last byte and renames the file into place.
func (w *vhdFixedWriter) Commit() error {
	if w.size < 0 {
		return fmt.Errorf("%s: Commit before Begin", w.cfg.name)
	}
	if err := vxWriteAt(w.rf, w.cfg.footer(w.sz, vhdwFixed, ^uint64(0)), w.sz.current); err != nil {
		return err
	}
	return vxCommit(w.rf, w.sz.current+vhdwFooterSize)
}

func (w *vhdFixedWriter) Abort() error { return w.rf.Abort() }

// vhdDynamicWriter writes a dynamic vhd; see the file's comment for the layout.
type vhdDynamicWriter struct {
	cfg  vhdConfig
	rf   *RawFile
	sz   vhdSizing
	size int64 // the source's size; -1 before Begin

	bat    []uint32
	batLen int64 // bytes, a whole number of sectors
	first  int64 // file offset of the first block's bitmap
	next   int64 // file offset of the next block's bitmap
	end    int64 // end of the last block (or of the BAT)
	pos    int64 // guest offset of the next chunk
	ones   []byte
}

var _ Writer = (*vhdDynamicWriter)(nil)

// vhdwStride is the distance between two blocks in the file: the bitmap and the data, and
// the padding that keeps the next block's data on a 4 KiB boundary.
const vhdwStride = vhdwBlockSize + (vhdwBitmapSize+vhdwDataAlign-1)/vhdwDataAlign*vhdwDataAlign

func (w *vhdDynamicWriter) Begin(size int64) (Layout, error) {
	sz, err := vhdSize(w.cfg.name, size, w.cfg.forceSize)
	if err != nil {
		return Layout{}, err
	}
	w.sz, w.size = sz, size
	n := (sz.current + vhdwBlockSize - 1) / vhdwBlockSize // at most 1044480: a 4 MiB BAT
	w.bat = make([]uint32, n)
	for i := range w.bat {
		w.bat[i] = vhdwUnallocated
	}
	w.batLen = alignUp(max(n*4, 1), vhdwSector)
	batEnd := int64(vhdwBATOffset) + w.batLen
	w.first = alignUp(batEnd+vhdwBitmapSize, vhdwDataAlign) - vhdwBitmapSize
	w.next = w.first
	w.end = batEnd
	w.ones = make([]byte, vhdwBitmapSize)
	for i := range w.ones {
		w.ones[i] = 0xff
	}
	return Layout{Ordered: true, BlockSize: vhdwSector}, nil
}

// Write stores a data chunk in its blocks, allocating each block (bitmap all ones) the
// first time data arrives for it; zero chunks leave their blocks as they are.
func (w *vhdDynamicWriter) Write(c *Chunk) error {
	if w.size < 0 {
		return fmt.Errorf("%s: internal error: Write before Begin", w.cfg.name)
	}
	if err := vxCheckChunk(w.cfg.name, c, w.pos, w.size); err != nil {
		return err
	}
	w.pos += c.Len
	if c.Zero() {
		return nil
	}
	for off := c.Off; off < c.Off+c.Len; {
		blk := off / vhdwBlockSize
		end := min((blk+1)*vhdwBlockSize, c.Off+c.Len)
		at, err := w.block(blk)
		if err != nil {
			return err
		}
		if err := vxWriteAt(w.rf, c.Data[off-c.Off:end-c.Off], at+off-blk*vhdwBlockSize); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// block returns the file offset of block blk's data, allocating the block if need be.
func (w *vhdDynamicWriter) block(blk int64) (int64, error) {
	if e := w.bat[blk]; e != vhdwUnallocated {
		return int64(e)*vhdwSector + vhdwBitmapSize, nil
	}
	at := w.next
	if at/vhdwSector > vhdwUnallocated-1 {
		return 0, fmt.Errorf("%s: internal error: block %d would start past what a BAT entry can address", w.cfg.name, blk)
	}
	if err := vxWriteAt(w.rf, w.ones, at); err != nil {
		return 0, err
	}
	w.bat[blk] = uint32(at / vhdwSector)
	w.next += vhdwStride
	w.end = at + vhdwBitmapSize + vhdwBlockSize
	return at + vhdwBitmapSize, nil
}

// Commit writes the BAT, the dynamic disk header, the footer at the end and its copy at
// the start, and renames the file into place.
func (w *vhdDynamicWriter) Commit() error {
	if w.size < 0 {
		return fmt.Errorf("%s: Commit before Begin", w.cfg.name)
	}
	if w.pos != w.size {
		return fmt.Errorf("%s: internal error: the chunks end at guest offset %d, the disk at %d", w.cfg.name, w.pos, w.size)
	}
	bat := make([]byte, w.batLen)
	for i := range bat {
		bat[i] = 0xff // qemu fills the BAT's last sector with unallocated entries too
	}
	for i, e := range w.bat {
		binary.BigEndian.PutUint32(bat[4*i:], e)
	}
	if err := vxWriteAt(w.rf, bat, vhdwBATOffset); err != nil {
		return err
	}
	footer := w.cfg.footer(w.sz, vhdwDynamic, vhdwFooterSize)
	head := make([]byte, vhdwFooterSize+vhdwHeaderSize)
	copy(head, footer)
	h := head[vhdwFooterSize:]
	be := binary.BigEndian
	copy(h[0:], "cxsparse")
	be.PutUint64(h[8:], ^uint64(0)) // data offset: unused
	be.PutUint64(h[16:], vhdwBATOffset)
	be.PutUint32(h[24:], 0x00010000) // header version 1.0
	be.PutUint32(h[28:], uint32(len(w.bat)))
	be.PutUint32(h[32:], vhdwBlockSize)
	be.PutUint32(h[36:], vhdwChecksum(h))
	if err := vxWriteAt(w.rf, head, 0); err != nil {
		return err
	}
	if err := vxWriteAt(w.rf, footer, w.end); err != nil {
		return err
	}
	return vxCommit(w.rf, w.end+vhdwFooterSize)
}

func (w *vhdDynamicWriter) Abort() error { return w.rf.Abort() }
