package convert

import (
	"encoding/binary"
	"fmt"
	"io"

	"glimpse/inspect"
)

// The vdi writer (qemu-img convert -O vdi): VirtualBox's Virtual Disk Image, version 1.1,
// as qemu's block/vdi.c writes it. All fields are little-endian.
//
// Layout: the 512-byte header sector (the 64-byte pre-header text, the signature 0xbeda107f,
// version 1.1 and a 0x180-byte header, as qemu writes it), the block map at 0x200 (one
// 32-bit entry per 1 MiB block: the block's index in the data area, or 0xffffffff for an
// unallocated block, which reads as zeros), then the data area, which starts on a 1 MiB
// boundary of the file as VirtualBox places it (VDI_DATA_ALIGN), so that every block is
// aligned in the file. qemu reads any sector-aligned data offset, and its own start right
// after the block map.
//
// The pre-header text is qemu's, "<<< QEMU VM Virtual Disk Image >>>": neither VirtualBox
// nor qemu reads it (both check the signature), and it says truthfully that VirtualBox did
// not write the file, as qemu's images have said for years without trouble. The legacy
// geometry is zero with 512-byte sectors and the header has no LCHS geometry, as qemu
// writes it: VirtualBox then works the geometry out itself.
//
// Options (-o), qemu's key:
//
//	static=on        a static (preallocated) image: every block is mapped, block i at data
//	                 block i, and data is written in place, concurrently; zero runs are
//	                 holes in the file (as qemu leaves them). Default off: a dynamic image,
//	                 whose data blocks are allocated in guest order (the writer is Ordered,
//	                 so the same input gives the same bytes) and whose zero blocks stay
//	                 unallocated.
//
// and glimpse's own, for reproducible output:
//
//	uuid=UUID        the image's UUID (default: random; not the null UUID, which VirtualBox
//	                 refuses). The modification UUID is then the name-based UUID (version
//	                 5) of "vdi modification" in that namespace, and random otherwise; the
//	                 linkage and parent UUIDs are zero.
//
// The block map is written a 64 KiB page at a time as the guest is passed, so the writer's
// memory does not grow with the disk.

const (
	vdiwSignature   = 0xbeda107f
	vdiwVersion     = 0x00010001
	vdiwHeaderSize  = 0x180
	vdiwMapOffset   = 0x200
	vdiwBlockSize   = 1 << 20
	vdiwDataAlign   = 1 << 20
	vdiwDynamic     = 1
	vdiwStatic      = 2
	vdiwUnallocated = 0xffffffff
	vdiwMaxBlocks   = 0x3fffffff // qemu's VDI_BLOCKS_IN_IMAGE_MAX
	vdiwText        = "<<< QEMU VM Virtual Disk Image >>>\n"
)

type vdiConfig struct {
	name   string
	static bool
	uuid   [16]byte
	modify [16]byte
	sync   bool
}

var vdiKeys = []string{"static", "size", "uuid"}

func parseVDIOptions(name string, o FormatOptions) (vdiConfig, error) {
	cfg := vdiConfig{name: name, sync: o.Sync}
	used := map[string]bool{}
	bad := func(key, v, why string) error { return fmt.Errorf("vdi: -o %s=%s: %s", key, v, why) }
	if err := o.takeBool(used, "vdi", "static", &cfg.static); err != nil {
		return cfg, err
	}
	if v, ok := o.take(used, "size"); ok {
		return cfg, bad("size", v, "the output's size is the source's")
	}
	u, given, err := vxUUIDOption(o, used, "vdi", "uuid")
	if err != nil {
		return cfg, err
	}
	cfg.uuid = u
	if given {
		cfg.modify = vxNameUUID(u, "vdi modification")
	} else if cfg.modify, err = vxRandomUUID(); err != nil {
		return cfg, err
	}
	if o.Compress {
		return cfg, fmt.Errorf("vdi images cannot be compressed (-c)")
	}
	if err := o.unknown(inspect.VDI, used, vdiKeys...); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func newVDIWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	cfg, err := parseVDIOptions(name, o)
	if err != nil {
		return nil, err
	}
	rf, err := vxCreate("vdi", name, cfg.sync)
	if err != nil {
		return nil, err
	}
	return &vdiWriter{cfg: cfg, rf: rf, size: -1}, nil
}

// vdiWriter writes a static or dynamic vdi.
type vdiWriter struct {
	cfg     vdiConfig
	rf      *RawFile
	size    int64 // the source's size; -1 before Begin
	disk    int64 // the disk size in the header: size rounded up to a sector
	blocks  int64
	dataOff int64
	bmap    *vxTable

	// dynamic only (Ordered)
	pos       int64 // guest offset of the next chunk
	allocated int64 // data blocks so far
	cur       int64 // the block of the last allocation, -1 before the first
}

var _ Writer = (*vdiWriter)(nil)

func (w *vdiWriter) Begin(size int64) (Layout, error) {
	disk := alignUp(size, 512)
	blocks := (disk + vdiwBlockSize - 1) / vdiwBlockSize
	if size < 0 || blocks > vdiwMaxBlocks {
		return Layout{}, fmt.Errorf("%s: a virtual size of %d bytes is more than a vdi holds (%d blocks of 1 MiB)", w.cfg.name, size, vdiwMaxBlocks)
	}
	w.size, w.disk, w.blocks = size, disk, blocks
	w.dataOff = alignUp(vdiwMapOffset+4*blocks, vdiwDataAlign)
	if w.dataOff > 0xffffffff {
		return Layout{}, fmt.Errorf("%s: a virtual size of %d bytes needs a block map that ends past 4 GiB, where a vdi header cannot place its data", w.cfg.name, size)
	}
	def := func(int64) uint64 { return vdiwUnallocated }
	if w.cfg.static {
		def = func(i int64) uint64 { return uint64(i) }
	}
	w.bmap = newVXTable(w.rf, vdiwMapOffset, blocks, 4, binary.LittleEndian, def)
	w.cur = -1
	if w.cfg.static {
		return Layout{BlockSize: 512}, nil
	}
	return Layout{Ordered: true, BlockSize: 512}, nil
}

// Write puts a data chunk in its blocks: in place for a static image; for a dynamic one in
// data blocks allocated in guest order, the first time data arrives for a block. Zero
// chunks write nothing.
func (w *vdiWriter) Write(c *Chunk) error {
	if w.size < 0 {
		return fmt.Errorf("%s: internal error: Write before Begin", w.cfg.name)
	}
	if w.cfg.static {
		if err := vxCheckPositional(w.cfg.name, c, w.size); err != nil {
			return err
		}
		if c.Zero() {
			return nil
		}
		return vxWriteAt(w.rf, c.Data, w.dataOff+c.Off)
	}
	if err := vxCheckChunk(w.cfg.name, c, w.pos, w.size); err != nil {
		return err
	}
	w.pos += c.Len
	if c.Zero() {
		return nil
	}
	for off := c.Off; off < c.Off+c.Len; {
		blk := off / vdiwBlockSize
		end := min((blk+1)*vdiwBlockSize, c.Off+c.Len)
		if blk != w.cur {
			// Chunks come in order, so a block other than the last one allocated is new.
			if err := w.bmap.set(blk, uint64(w.allocated)); err != nil {
				return err
			}
			w.cur = blk
			w.allocated++
		}
		at := w.dataOff + (w.allocated-1)*vdiwBlockSize + off - blk*vdiwBlockSize
		if err := vxWriteAt(w.rf, c.Data[off-c.Off:end-c.Off], at); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// Commit writes the rest of the block map and the header, and renames the file into place.
func (w *vdiWriter) Commit() error {
	if w.size < 0 {
		return fmt.Errorf("%s: Commit before Begin", w.cfg.name)
	}
	if !w.cfg.static && w.pos != w.size {
		return fmt.Errorf("%s: internal error: the chunks end at guest offset %d, the disk at %d", w.cfg.name, w.pos, w.size)
	}
	if err := w.bmap.finish(); err != nil {
		return err
	}
	allocated := w.allocated
	if w.cfg.static {
		allocated = w.blocks
	}
	if err := vxWriteAt(w.rf, w.header(allocated), 0); err != nil {
		return err
	}
	return vxCommit(w.rf, w.dataOff+allocated*vdiwBlockSize)
}

// header encodes the header sector.
func (w *vdiWriter) header(allocated int64) []byte {
	b := make([]byte, 512)
	le := binary.LittleEndian
	copy(b, vdiwText)
	le.PutUint32(b[0x40:], vdiwSignature)
	le.PutUint32(b[0x44:], vdiwVersion)
	le.PutUint32(b[0x48:], vdiwHeaderSize)
	typ := uint32(vdiwDynamic)
	if w.cfg.static {
		typ = vdiwStatic
	}
	le.PutUint32(b[0x4c:], typ)
	// 0x50 flags and 0x54 the 256-byte comment: zero
	le.PutUint32(b[0x154:], vdiwMapOffset)
	le.PutUint32(b[0x158:], uint32(w.dataOff))
	// 0x15c cylinders, heads, sectors: zero, as qemu writes them
	le.PutUint32(b[0x168:], 512) // sector size
	le.PutUint64(b[0x170:], uint64(w.disk))
	le.PutUint32(b[0x178:], vdiwBlockSize)
	// 0x17c extra data per block: zero
	le.PutUint32(b[0x180:], uint32(w.blocks))
	le.PutUint32(b[0x184:], uint32(allocated))
	u, m := vxMixedEndian(w.cfg.uuid), vxMixedEndian(w.cfg.modify)
	copy(b[0x188:], u[:])
	copy(b[0x198:], m[:])
	// 0x1a8 linkage and 0x1b8 parent modification UUIDs: zero
	return b
}

func (w *vdiWriter) Abort() error { return w.rf.Abort() }
