package convert

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"unicode/utf16"

	"glimpse/inspect"
)

// The vhdx writer (qemu-img convert -O vhdx), after Microsoft's "VHDX Format
// Specification" (MS-VHDX). All fields are little-endian; GUIDs are stored in Microsoft's
// mixed-endian layout.
//
// Layout, as Hyper-V lays out a new disk: the 1 MiB header section (the file type
// identifier "vhdxfile" with the creator "glimpse" in UTF-16, two headers at 64 and 128
// KiB with CRC-32C and sequence numbers 1 and 2, so the second is current, and two
// identical region tables at 192 and 256 KiB naming the BAT and metadata regions, both
// required), the log at 1 MiB, the metadata region after it (1 MiB: the table, then the
// file parameters, virtual disk size, logical and physical sector sizes and page 83 data
// items, all required), the BAT region after that (a whole number of MiB), then the
// payload blocks, each on a 1 MiB boundary.
//
// The log is empty: the headers name its place and size but their log GUID is zero, as in
// a clean image qemu or Hyper-V closed, so no reader replays anything. The file write and
// data write GUIDs are set; readers compare them only with a differencing child's record.
//
// The BAT has one entry per payload block and a sector bitmap entry after every chunk
// ratio (2^23 × logical sector size / block size) of them; sector bitmap entries are
// SB_BLOCK_NOT_PRESENT (0), as a disk without a parent has them. It is written a 64 KiB
// page at a time as the guest is passed, so the writer's memory does not grow with the
// disk (a 64 TiB disk of 1 MiB blocks has a 512 MiB BAT).
//
// Dynamic disks (the default): the writer is Ordered. A payload block is allocated, at the
// end of the file, when the first data for it arrives, and its entry is FULLY_PRESENT;
// data comes as the pipeline hands it (at most a chunk, 1 MiB by default, at a time),
// never a whole block in memory, and the zero runs inside an allocated block are holes in
// the file. Blocks with no data are PAYLOAD_BLOCK_ZERO (qemu's default, block_state_zero=on:
// the only state the spec guarantees to read as zeros) or, with block_state_zero=off,
// PAYLOAD_BLOCK_NOT_PRESENT (what Hyper-V writes for a new disk; the spec lets a reader
// return anything for them, though Hyper-V and qemu return zeros).
//
// Fixed disks: every payload block is FULLY_PRESENT, block i at the start of the payload
// plus i block sizes, with the LeaveBlockAllocated flag; data is written in place,
// concurrently (the writer is positional), and zero runs are holes.
//
// Every allocated block lies whole in the file, the last one too, as Hyper-V writes it.
//
// Options (-o), qemu's keys and spellings:
//
//	subformat=dynamic|fixed
//	block_size=SIZE  the payload block size, a power of two from 1M to 256M (default 32M,
//	                 Hyper-V's default; 0 picks qemu's size by the disk's size)
//	log_size=SIZE    the log's size, rounded up to a MiB (default 1M)
//	block_state_zero=on|off   the state of blocks with no data: ZERO (on, the default) or
//	                 NOT_PRESENT
//
// and glimpse's own:
//
//	logical_sector_size=512|4096   (default 512; the physical sector size is always 4096,
//	                 as Hyper-V writes it). A disk with 4096-byte logical sectors is a 4Kn
//	                 disk to the guest; Hyper-V and glimpse read it, qemu 7.2 refuses to
//	                 open it ("Operation not supported": it reads only 512-byte sectors).
//	uuid=UUID        the page 83 data, the disk's identity (default: random; not the null
//	                 UUID). The file write and data write GUIDs are then the name-based
//	                 UUIDs (version 5) of "vhdx file write" and "vhdx data write" in that
//	                 namespace, and random otherwise, so that uuid= makes the output
//	                 reproducible.

const (
	vhdxwMiB           = 1 << 20
	vhdxwHeaderSection = vhdxwMiB
	vhdxwHeaderSize    = 4 << 10
	vhdxwTableSize     = 64 << 10
	vhdxwMetaSize      = vhdxwMiB
	vhdxwMinBlock      = vhdxwMiB
	vhdxwMaxBlock      = 256 * vhdxwMiB
	vhdxwDefaultBlock  = 32 * vhdxwMiB
	vhdxwMaxLog        = 4095 * vhdxwMiB // the header's log length is 32 bits
	vhdxwMaxVirtual    = 64 << 40        // the spec's limit, and qemu's
	vhdxwSectorsPerSB  = 1 << 23         // sectors one sector bitmap block describes
	vhdxwPhysical      = 4096
	vhdxwCreator       = "glimpse"

	vhdxwNotPresent   = 0
	vhdxwZero         = 2
	vhdxwFullyPresent = 6

	vhdxwLeaveAllocated = 1 // file parameters flag
	vhdxwRequired       = 4 // metadata item flag IsRequired
	vhdxwVirtualDisk    = 2 // metadata item flag IsVirtualDisk
)

// The GUIDs of the spec, in Microsoft's layout.
var (
	vhdxwBATRegion      = vhdxwGUID(0x2dc27766, 0xf623, 0x4200, [8]byte{0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08})
	vhdxwMetadataRegion = vhdxwGUID(0x8b7ca206, 0x4790, 0x4b9a, [8]byte{0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e})
	vhdxwFileParams     = vhdxwGUID(0xcaa16737, 0xfa36, 0x4d43, [8]byte{0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b})
	vhdxwDiskSize       = vhdxwGUID(0x2fa54224, 0xcd1b, 0x4876, [8]byte{0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8})
	vhdxwPage83         = vhdxwGUID(0xbeca12ab, 0xb2e6, 0x4523, [8]byte{0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46})
	vhdxwLogicalSector  = vhdxwGUID(0x8141bf1d, 0xa96f, 0x4709, [8]byte{0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f})
	vhdxwPhysicalSector = vhdxwGUID(0xcda348c7, 0x445d, 0x4471, [8]byte{0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56})
)

func vhdxwGUID(d1 uint32, d2, d3 uint16, d4 [8]byte) [16]byte {
	var g [16]byte
	binary.LittleEndian.PutUint32(g[0:], d1)
	binary.LittleEndian.PutUint16(g[4:], d2)
	binary.LittleEndian.PutUint16(g[6:], d3)
	copy(g[8:], d4[:])
	return g
}

var vhdxwCRC = crc32.MakeTable(crc32.Castagnoli)

// vhdxwSum stores the CRC-32C of b (with its checksum field, at 4, zero) at 4.
func vhdxwSum(b []byte) {
	binary.LittleEndian.PutUint32(b[4:], 0)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b, vhdxwCRC))
}

type vhdxConfig struct {
	name      string
	fixed     bool
	blockSize int64 // 0: qemu's choice by the disk's size
	logSize   int64
	zeroState bool
	logical   int64
	page83    [16]byte // printed (RFC) byte order
	fileWrite [16]byte
	dataWrite [16]byte
	sync      bool
}

var vhdxKeys = []string{"subformat", "block_size", "log_size", "block_state_zero", "size", "logical_sector_size", "uuid"}

func parseVHDXOptions(name string, o FormatOptions) (vhdxConfig, error) {
	cfg := vhdxConfig{name: name, blockSize: vhdxwDefaultBlock, logSize: vhdxwMiB, zeroState: true, logical: 512, sync: o.Sync}
	used := map[string]bool{}
	bad := func(key, v, why string) error { return fmt.Errorf("vhdx: -o %s=%s: %s", key, v, why) }
	if v, ok := o.take(used, "subformat"); ok {
		switch v {
		case "dynamic":
		case "fixed":
			cfg.fixed = true
		case "differencing":
			return cfg, bad("subformat", v, "glimpse writes no differencing disks: the output holds the whole disk")
		default:
			return cfg, bad("subformat", v, "want dynamic or fixed")
		}
	}
	if v, ok := o.take(used, "block_size"); ok {
		n, err := parseQemuSize(v)
		if err != nil || n != 0 && (n < vhdxwMinBlock || n > vhdxwMaxBlock || n&(n-1) != 0) {
			return cfg, bad("block_size", v, "the block size must be a power of two from 1M to 256M (or 0 for qemu's choice by the disk's size)")
		}
		cfg.blockSize = n
	}
	if v, ok := o.take(used, "log_size"); ok {
		n, err := parseQemuSize(v)
		if err != nil || n > vhdxwMaxLog {
			return cfg, bad("log_size", v, "the log size must be at most 4095M (it is rounded up to a whole MiB, at least 1M)")
		}
		cfg.logSize = max(alignUp(n, vhdxwMiB), vhdxwMiB)
	}
	if err := o.takeBool(used, "vhdx", "block_state_zero", &cfg.zeroState); err != nil {
		return cfg, err
	}
	if v, ok := o.take(used, "logical_sector_size"); ok {
		switch v {
		case "512":
		case "4096", "4k", "4K":
			cfg.logical = 4096
		default:
			return cfg, bad("logical_sector_size", v, "want 512 or 4096")
		}
	}
	if v, ok := o.take(used, "size"); ok {
		return cfg, bad("size", v, "the output's size is the source's")
	}
	u, given, err := vxUUIDOption(o, used, "vhdx", "uuid")
	if err != nil {
		return cfg, err
	}
	cfg.page83 = u
	if given {
		cfg.fileWrite = vxNameUUID(u, "vhdx file write")
		cfg.dataWrite = vxNameUUID(u, "vhdx data write")
	} else {
		if cfg.fileWrite, err = vxRandomUUID(); err != nil {
			return cfg, err
		}
		if cfg.dataWrite, err = vxRandomUUID(); err != nil {
			return cfg, err
		}
	}
	if o.Compress {
		return cfg, fmt.Errorf("vhdx images cannot be compressed (-c)")
	}
	if err := o.unknown(inspect.VHDX, used, vhdxKeys...); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func newVHDXWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	cfg, err := parseVHDXOptions(name, o)
	if err != nil {
		return nil, err
	}
	rf, err := vxCreate("vhdx", name, cfg.sync)
	if err != nil {
		return nil, err
	}
	return &vhdxWriter{cfg: cfg, rf: rf, size: -1}, nil
}

// vhdxQemuBlockSize is qemu's block size for block_size=0, by the disk's size.
func vhdxQemuBlockSize(size int64) int64 {
	switch {
	case size > 32<<40:
		return 64 * vhdxwMiB
	case size > 100<<30:
		return 32 * vhdxwMiB
	case size > 1<<30:
		return 16 * vhdxwMiB
	}
	return 8 * vhdxwMiB
}

// vhdxLayout is where everything goes for one disk.
type vhdxLayout struct {
	virtual    int64 // the virtual disk size: the source's, rounded up to a logical sector
	block      int64
	blocks     int64 // payload blocks
	ratio      int64 // chunk ratio
	batEntries int64
	logOff     int64
	metaOff    int64
	batOff     int64
	batLen     int64
	dataOff    int64 // the first payload block
}

func newVHDXLayout(cfg *vhdxConfig, size int64) (vhdxLayout, error) {
	var l vhdxLayout
	if size < 0 || size > vhdxwMaxVirtual {
		return l, fmt.Errorf("%s: a virtual size of %d bytes is more than a vhdx holds (64 TiB)", cfg.name, size)
	}
	l.virtual = alignUp(size, cfg.logical)
	l.block = cfg.blockSize
	if l.block == 0 {
		l.block = vhdxQemuBlockSize(l.virtual)
	}
	l.blocks = (l.virtual + l.block - 1) / l.block
	l.ratio = vhdxwSectorsPerSB * cfg.logical / l.block
	if l.blocks > 0 {
		l.batEntries = l.blocks + (l.blocks-1)/l.ratio
	}
	l.logOff = vhdxwHeaderSection
	l.metaOff = l.logOff + cfg.logSize
	l.batOff = l.metaOff + vhdxwMetaSize
	l.batLen = max(alignUp(l.batEntries*8, vhdxwMiB), vhdxwMiB)
	if l.blocks == 0 {
		// qemu 7.2 counts the BAT entries of an empty disk in 32 bits as 0 + (0-1)/ratio
		// and refuses a BAT region smaller than that, so it gets that much room, as
		// qemu's own empty images have (a hole: it costs no space).
		l.batLen = alignUp(int64(uint32(0xffffffff)>>bits.TrailingZeros64(uint64(l.ratio)))*8, vhdxwMiB)
	}
	l.dataOff = l.batOff + l.batLen
	if l.batLen > 0xffffffff {
		return l, fmt.Errorf("%s: a virtual size of %d bytes needs a BAT of %d bytes with %d-byte blocks, more than a region can hold (4 GiB); use a larger block_size", cfg.name, size, l.batLen, l.block)
	}
	return l, nil
}

// batIndex is the BAT entry of payload block i.
func (l *vhdxLayout) batIndex(i int64) int64 { return i + i/l.ratio }

// vhdxWriter writes a dynamic or fixed vhdx.
type vhdxWriter struct {
	cfg  vhdxConfig
	rf   *RawFile
	lay  vhdxLayout
	size int64 // the source's size; -1 before Begin
	bat  *vxTable

	// dynamic only (Ordered)
	pos  int64 // guest offset of the next chunk
	next int64 // file offset of the next payload block
	cur  int64 // the last block allocated, -1 before the first
}

var _ Writer = (*vhdxWriter)(nil)

// Begin writes everything but the BAT: the header section and the metadata region.
func (w *vhdxWriter) Begin(size int64) (Layout, error) {
	lay, err := newVHDXLayout(&w.cfg, size)
	if err != nil {
		return Layout{}, err
	}
	w.lay, w.size = lay, size
	w.next, w.cur = lay.dataOff, -1
	state := uint64(vhdxwNotPresent)
	if w.cfg.zeroState {
		state = vhdxwZero
	}
	def := func(i int64) uint64 {
		if i%(lay.ratio+1) == lay.ratio {
			return 0 // sector bitmap block: not present
		}
		if w.cfg.fixed {
			blk := i - i/(lay.ratio+1)
			return uint64(lay.dataOff+blk*lay.block) | vhdxwFullyPresent
		}
		return state
	}
	w.bat = newVXTable(w.rf, lay.batOff, lay.batEntries, 8, binary.LittleEndian, def)
	if err := w.writeHeaderSection(); err != nil {
		return Layout{}, err
	}
	if err := w.writeMetadata(); err != nil {
		return Layout{}, err
	}
	if w.cfg.fixed {
		return Layout{BlockSize: w.cfg.logical}, nil
	}
	return Layout{Ordered: true, BlockSize: w.cfg.logical}, nil
}

// writeHeaderSection writes the file type identifier, both headers and both region tables.
func (w *vhdxWriter) writeHeaderSection() error {
	le := binary.LittleEndian
	b := make([]byte, 5*vhdxwTableSize) // identifier, header 1, header 2, region tables 1 and 2
	copy(b, "vhdxfile")
	for i, u := range utf16.Encode([]rune(vhdxwCreator)) {
		le.PutUint16(b[8+2*i:], u)
	}
	fw, dw := vxMixedEndian(w.cfg.fileWrite), vxMixedEndian(w.cfg.dataWrite)
	for i := range 2 {
		h := b[(1+i)*vhdxwTableSize:][:vhdxwHeaderSize]
		copy(h, "head")
		le.PutUint64(h[8:], uint64(1+i)) // sequence number: the second header is current
		copy(h[16:], fw[:])
		copy(h[32:], dw[:])
		// 48: the log GUID, zero: no log to replay
		le.PutUint16(h[64:], 0) // log version
		le.PutUint16(h[66:], 1) // version
		le.PutUint32(h[68:], uint32(w.cfg.logSize))
		le.PutUint64(h[72:], uint64(w.lay.logOff))
		vhdxwSum(h)
	}
	rt := b[3*vhdxwTableSize:][:vhdxwTableSize]
	copy(rt, "regi")
	le.PutUint32(rt[8:], 2)
	for i, r := range []struct {
		guid     [16]byte
		off, len int64
	}{{vhdxwBATRegion, w.lay.batOff, w.lay.batLen}, {vhdxwMetadataRegion, w.lay.metaOff, vhdxwMetaSize}} {
		e := rt[16+32*i:]
		copy(e, r.guid[:])
		le.PutUint64(e[16:], uint64(r.off))
		le.PutUint32(e[24:], uint32(r.len))
		le.PutUint32(e[28:], 1) // required
	}
	vhdxwSum(rt)
	copy(b[4*vhdxwTableSize:], rt)
	return vxWriteSparse(w.rf, b, 0)
}

// writeMetadata writes the metadata table and its five items.
func (w *vhdxWriter) writeMetadata() error {
	le := binary.LittleEndian
	b := make([]byte, vhdxwTableSize+64)
	copy(b, "metadata")
	items := []struct {
		guid  [16]byte
		data  []byte
		flags uint32
	}{
		{vhdxwFileParams, make([]byte, 8), vhdxwRequired},
		{vhdxwDiskSize, make([]byte, 8), vhdxwRequired | vhdxwVirtualDisk},
		{vhdxwLogicalSector, make([]byte, 4), vhdxwRequired | vhdxwVirtualDisk},
		{vhdxwPhysicalSector, make([]byte, 4), vhdxwRequired | vhdxwVirtualDisk},
		{vhdxwPage83, nil, vhdxwRequired | vhdxwVirtualDisk},
	}
	le.PutUint32(items[0].data, uint32(w.lay.block))
	if w.cfg.fixed {
		le.PutUint32(items[0].data[4:], vhdxwLeaveAllocated)
	}
	le.PutUint64(items[1].data, uint64(w.lay.virtual))
	le.PutUint32(items[2].data, uint32(w.cfg.logical))
	le.PutUint32(items[3].data, vhdxwPhysical)
	p83 := vxMixedEndian(w.cfg.page83)
	items[4].data = p83[:]
	le.PutUint16(b[10:], uint16(len(items)))
	at := vhdxwTableSize
	for i, it := range items {
		e := b[32+32*i:]
		copy(e, it.guid[:])
		le.PutUint32(e[16:], uint32(at))
		le.PutUint32(e[20:], uint32(len(it.data)))
		le.PutUint32(e[24:], it.flags)
		at += copy(b[at:], it.data)
	}
	return vxWriteSparse(w.rf, b[:at], w.lay.metaOff)
}

// Write puts a data chunk in its payload blocks: in place for a fixed disk; for a dynamic
// one in blocks allocated at the end of the file the first time data arrives for them.
// Zero chunks write nothing.
func (w *vhdxWriter) Write(c *Chunk) error {
	if w.size < 0 {
		return fmt.Errorf("%s: internal error: Write before Begin", w.cfg.name)
	}
	if w.cfg.fixed {
		if err := vxCheckPositional(w.cfg.name, c, w.size); err != nil {
			return err
		}
		if c.Zero() {
			return nil
		}
		return vxWriteAt(w.rf, c.Data, w.lay.dataOff+c.Off)
	}
	if err := vxCheckChunk(w.cfg.name, c, w.pos, w.size); err != nil {
		return err
	}
	w.pos += c.Len
	if c.Zero() {
		return nil
	}
	bs := w.lay.block
	for off := c.Off; off < c.Off+c.Len; {
		blk := off / bs
		end := min((blk+1)*bs, c.Off+c.Len)
		if blk != w.cur {
			// Chunks come in order, so a block other than the last one allocated is new.
			if err := w.bat.set(w.lay.batIndex(blk), uint64(w.next)|vhdxwFullyPresent); err != nil {
				return err
			}
			w.cur = blk
			w.next += bs
		}
		at := w.next - bs + off - blk*bs
		if err := vxWriteAt(w.rf, c.Data[off-c.Off:end-c.Off], at); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// Commit writes the rest of the BAT and renames the file into place.
func (w *vhdxWriter) Commit() error {
	if w.size < 0 {
		return fmt.Errorf("%s: Commit before Begin", w.cfg.name)
	}
	if !w.cfg.fixed && w.pos != w.size {
		return fmt.Errorf("%s: internal error: the chunks end at guest offset %d, the disk at %d", w.cfg.name, w.pos, w.size)
	}
	if err := w.bat.finish(); err != nil {
		return err
	}
	end := w.next
	if w.cfg.fixed {
		end = w.lay.dataOff + w.lay.blocks*w.lay.block
	}
	return vxCommit(w.rf, end)
}

func (w *vhdxWriter) Abort() error { return w.rf.Abort() }
