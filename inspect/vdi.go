package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"
	"sync"
)

// VirtualBox VDI, version 1.1, as VirtualBox and qemu write it (block/vdi.c is the reference
// for behaviour): a 64-byte text pre-header, the signature 0xbeda107f at 0x40, the version,
// the header, then a block map of 32-bit entries (one per block: the index of the block in
// the data area, or 0xffffffff unallocated, or 0xfffffffe discarded, which reads as zeros)
// and the data area. All fields are little-endian.

const (
	vdiSignature     = 0xbeda107f
	vdiVersion11     = 0x00010001
	vdiUnallocated   = 0xffffffff
	vdiDiscarded     = 0xfffffffe
	vdiHeaderStart   = 0x48  // the header follows the 64-byte text, signature and version
	vdiHeaderMinSize = 0x180 // qemu writes 0x180; VirtualBox 0x190 (with the LCHS geometry)
	// vdiMaxBlocks is qemu's VDI_BLOCKS_IN_IMAGE_MAX: a block map is at most 4 GiB.
	vdiMaxBlocks = 0x3fffffff
	// vdiMaxDiskSize is qemu's VDI_DISK_SIZE_MAX.
	vdiMaxDiskSize = vdiMaxBlocks * (1 << 20)
	// Block sizes glimpse accepts: powers of two (as VirtualBox requires) from 4 KiB to
	// 256 MiB. qemu only opens 1 MiB, the size every tool writes.
	vdiMinBlockSize = 4 << 10
	vdiMaxBlockSize = 256 << 20
	// The block map is read in pages of vdiPageEntries entries (16 KiB), and at most
	// vdiMaxPages pages (1 MiB) are kept: that is the whole map of a 64 GiB disk with 1 MiB
	// blocks, and a bounded cache for anything larger.
	vdiPageEntries = 4096
	vdiMaxPages    = 64
	// vdiMaxRun bounds how many blocks one lookup merges, so that a lookup stays cheap
	// however large the disk.
	vdiMaxRun = 1024
)

// VDIInfo is the format-specific detail of a VDI image.
type VDIInfo struct {
	Text             string       `json:"text"`
	Version          string       `json:"version"`
	HeaderSize       uint32       `json:"header-size"`
	ImageType        string       `json:"image-type"` // normal (dynamic), fixed (static), undo, diff
	Flags            uint32       `json:"flags"`
	Comment          string       `json:"comment,omitempty"`
	BlockMapOffset   uint32       `json:"block-map-offset"`
	DataOffset       uint32       `json:"data-offset"`
	LegacyGeometry   VDIGeometry  `json:"legacy-geometry"`
	LCHSGeometry     *VDIGeometry `json:"lchs-geometry,omitempty"`
	DiskSize         uint64       `json:"disk-size"`
	BlockSize        uint32       `json:"block-size"`
	BlockExtra       uint32       `json:"block-extra-data"`
	Blocks           uint32       `json:"blocks"`
	BlocksAllocated  uint32       `json:"blocks-allocated"`
	UUID             string       `json:"uuid"`
	ModifyUUID       string       `json:"modify-uuid"`
	LinkUUID         string       `json:"link-uuid,omitempty"` // the parent's UUID
	ParentModifyUUID string       `json:"parent-modify-uuid,omitempty"`
}

// VDIGeometry is a disk geometry recorded in the VDI header.
type VDIGeometry struct {
	Cylinders  uint32 `json:"cylinders"`
	Heads      uint32 `json:"heads"`
	Sectors    uint32 `json:"sectors"`
	SectorSize uint32 `json:"sector-size"`
}

var vdiTypeNames = map[uint32]string{1: "normal", 2: "fixed", 3: "undo", 4: "diff"}

type vdiCore struct {
	r         io.ReaderAt
	name      string
	info      VDIInfo
	virtual   int64
	fileSize  int64
	sizeKnown bool
	bmapOff   int64
	dataOff   int64
	bsize     int64 // block size
	bshift    uint
	stride    int64 // block size plus the extra data before each block
	extra     int64
	blocks    int64 // blocks in the image (entries of the block map)
	used      int64 // blocks that cover the virtual disk
	hasParent bool
	finds     []Finding

	mu    sync.Mutex
	pages map[int64][]uint32
	order []int64 // pages in load order, for eviction
}

func probeVDI(p *probeData) bool {
	b := p.at(0, 512)
	return b != nil && binary.LittleEndian.Uint32(b[0x40:]) == vdiSignature
}

func openVDI(o *opener) (core, error) {
	h, err := readAt(o.r, 0, 512, VDI, "header")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, wrongFormat(VDI, "file shorter than a VDI header")
		}
		return nil, err
	}
	le := binary.LittleEndian
	if le.Uint32(h[0x40:]) != vdiSignature {
		return nil, wrongFormat(VDI, "no VDI signature at 0x40")
	}
	u32 := func(off int) uint32 { return le.Uint32(h[off:]) }
	info := VDIInfo{
		Text:            strings.TrimRight(cstring(h[:0x40]), "\n"),
		HeaderSize:      u32(0x48),
		Flags:           u32(0x50),
		Comment:         strings.ToValidUTF8(cstring(h[0x54:0x154]), "\uFFFD"),
		BlockMapOffset:  u32(0x154),
		DataOffset:      u32(0x158),
		LegacyGeometry:  VDIGeometry{u32(0x15c), u32(0x160), u32(0x164), u32(0x168)},
		DiskSize:        le.Uint64(h[0x170:]),
		BlockSize:       u32(0x178),
		BlockExtra:      u32(0x17c),
		Blocks:          u32(0x180),
		BlocksAllocated: u32(0x184),
		UUID:            vdiUUID(h[0x188:]),
		ModifyUUID:      vdiUUID(h[0x198:]),
	}
	version := u32(0x44)
	info.Version = fmt.Sprintf("%d.%d", version>>16, version&0xffff)
	if version != vdiVersion11 {
		return nil, o.ferr(VDI, "pre-header", "version", 0x44, info.Version, "is not supported (only 1.1, which VirtualBox and qemu write)")
	}
	if info.HeaderSize < vdiHeaderMinSize || info.HeaderSize > 512-vdiHeaderStart {
		return nil, o.ferr(VDI, "header", "header size", 0x48, info.HeaderSize, "is outside %d..%d", vdiHeaderMinSize, 512-vdiHeaderStart)
	}
	if info.HeaderSize >= 0x190 {
		info.LCHSGeometry = &VDIGeometry{u32(0x1c8), u32(0x1cc), u32(0x1d0), u32(0x1d4)}
	}
	typ := u32(0x4c)
	name, ok := vdiTypeNames[typ]
	if !ok {
		return nil, o.ferr(VDI, "header", "image type", 0x4c, typ, "is not 1 (normal), 2 (fixed), 3 (undo) or 4 (diff)")
	}
	info.ImageType = name
	if !isZero(h[0x1a8:0x1b8]) {
		info.LinkUUID = vdiUUID(h[0x1a8:])
	}
	if !isZero(h[0x1b8:0x1c8]) {
		info.ParentModifyUUID = vdiUUID(h[0x1b8:])
	}

	// qemu's checks (vdi_open), then VirtualBox's (vdiValidateHeader).
	if info.DiskSize > vdiMaxDiskSize {
		return nil, o.ferr(VDI, "header", "disk size", 0x170, info.DiskSize, "exceeds the largest VDI (%d bytes)", uint64(vdiMaxDiskSize))
	}
	if info.BlockMapOffset%512 != 0 || info.BlockMapOffset < vdiHeaderStart+info.HeaderSize {
		return nil, o.ferr(VDI, "header", "block map offset", 0x154, info.BlockMapOffset, "is not a sector boundary after the header")
	}
	if info.DataOffset%512 != 0 {
		return nil, o.ferr(VDI, "header", "data offset", 0x158, info.DataOffset, "is not a multiple of 512")
	}
	if info.LegacyGeometry.SectorSize != 512 {
		return nil, o.ferr(VDI, "header", "sector size", 0x168, info.LegacyGeometry.SectorSize, "is not 512")
	}
	bs := info.BlockSize
	if bs < vdiMinBlockSize || bs > vdiMaxBlockSize || bs&(bs-1) != 0 {
		return nil, o.ferr(VDI, "header", "block size", 0x178, bs, "is not a power of two from %d to %d", vdiMinBlockSize, vdiMaxBlockSize)
	}
	if ex := info.BlockExtra; ex != 0 && (ex&(ex-1) != 0 || ex > vdiMaxBlockSize) {
		return nil, o.ferr(VDI, "header", "block extra data", 0x17c, ex, "is neither 0 nor a power of two up to %d", vdiMaxBlockSize)
	}
	if info.Blocks > vdiMaxBlocks {
		return nil, o.ferr(VDI, "header", "blocks in image", 0x180, info.Blocks, "exceeds %d", vdiMaxBlocks)
	}
	disk := alignUp(int64(info.DiskSize), 512) // qemu rounds odd sizes up, as VBoxManage writes them
	if uint64(disk) > uint64(info.Blocks)*uint64(bs) {
		return nil, o.ferr(VDI, "header", "disk size", 0x170, info.DiskSize, "needs more than the %d blocks of %d bytes the block map has", info.Blocks, bs)
	}
	bmapEnd := int64(info.BlockMapOffset) + 4*int64(info.Blocks)
	if int64(info.DataOffset) < bmapEnd {
		return nil, o.ferr(VDI, "header", "data offset", 0x158, info.DataOffset, "lies inside the block map (which ends at %d)", bmapEnd)
	}

	c := &vdiCore{
		r: o.r, name: o.name, info: info, virtual: disk, fileSize: o.size, sizeKnown: o.sizeKnown,
		bmapOff: int64(info.BlockMapOffset), dataOff: int64(info.DataOffset),
		bsize: int64(bs), bshift: uint(bits.TrailingZeros32(bs)), extra: int64(info.BlockExtra),
		blocks: int64(info.Blocks), pages: make(map[int64][]uint32),
	}
	c.stride = c.bsize + c.extra
	c.used = (disk + c.bsize - 1) >> c.bshift

	if typ == 3 || typ == 4 || info.LinkUUID != "" || info.ParentModifyUUID != "" {
		c.hasParent = true
		parent := info.LinkUUID
		if parent == "" {
			parent = "unknown"
		}
		c.finds = append(c.finds, Finding{FindBackingFile,
			fmt.Sprintf("VDI image type %s depends on a parent image (UUID %s); qemu cannot open it", name, parent)})
	}
	if o.pastEOF(c.bmapOff, 4*c.blocks) {
		c.finds = append(c.finds, Finding{FindPastEOF,
			fmt.Sprintf("the block map (%d bytes at offset %d) runs past the end of the file (%d bytes)", 4*c.blocks, c.bmapOff, o.size)})
	}
	if alloc := min(int64(info.BlocksAllocated), c.blocks); o.pastEOF(c.dataOff, alloc*c.stride) {
		c.finds = append(c.finds, Finding{FindPastEOF,
			fmt.Sprintf("the %d allocated blocks of %d bytes at offset %d run past the end of the file (%d bytes)", alloc, c.stride, c.dataOff, o.size)})
	}
	return c, nil
}

// vdiUUID formats a VirtualBox RTUUID (its first three fields little-endian), as qemu and
// VBoxManage print it.
func vdiUUID(b []byte) string { return strings.ToLower(ptGUID(b[:16])) }

func (c *vdiCore) size() int64 { return c.virtual }

func (c *vdiCore) describe(info *Info) {
	info.ClusterSize = c.bsize
	info.FormatSpecific = &FormatSpecific{Type: VDI, Data: c.info}
}

func (c *vdiCore) findings() []Finding { return c.finds }

// page returns the block map page holding entry i (and the index of its first entry).
func (c *vdiCore) page(i int64) ([]uint32, int64, error) {
	p := i / vdiPageEntries
	first := p * vdiPageEntries
	c.mu.Lock()
	pg, ok := c.pages[p]
	c.mu.Unlock()
	if ok {
		return pg, first, nil
	}
	n := min(int64(vdiPageEntries), c.blocks-first)
	raw, err := readAt(c.r, c.bmapOff+4*first, 4*n, VDI, "block map")
	if err != nil {
		return nil, 0, err
	}
	pg = make([]uint32, n)
	for k := range pg {
		pg[k] = binary.LittleEndian.Uint32(raw[4*k:])
	}
	c.mu.Lock()
	if _, ok := c.pages[p]; !ok {
		if len(c.order) >= vdiMaxPages {
			delete(c.pages, c.order[0])
			c.order = append(c.order[:0], c.order[1:]...)
		}
		c.pages[p] = pg
		c.order = append(c.order, p)
	}
	c.mu.Unlock()
	return pg, first, nil
}

// lookup maps a guest offset to the run of blocks that begins there: consecutive data
// blocks stored one after the other in the file merge into one run, as do consecutive
// unallocated or discarded blocks.
func (c *vdiCore) lookup(off int64) (segment, error) {
	blk := off >> c.bshift
	in := off & (c.bsize - 1)
	pg, first, err := c.page(blk)
	if err != nil {
		return segment{}, err
	}
	k := blk - first
	e := pg[k]
	n := int64(1)
	limit := min(int64(len(pg))-k, c.used-blk, vdiMaxRun)
	switch {
	case e == vdiUnallocated || e == vdiDiscarded:
		for n < limit && pg[k+n] == e {
			n++
		}
		if e == vdiUnallocated && c.hasParent {
			return segment{}, unsupported(VDI, "block %d is in the parent image, which is found by UUID and cannot be opened", blk)
		}
		kind := KindHole
		if e == vdiDiscarded {
			kind = KindZero
		}
		return segment{kind: kind, length: n<<c.bshift - in, host: -1}, nil
	default:
		if c.extra == 0 {
			for n < limit && pg[k+n] == e+uint32(n) {
				n++
			}
		}
		host := c.dataOff + int64(e)*c.stride + c.extra + in
		return segment{kind: KindData, length: n<<c.bshift - in, r: c.r, off: host, host: host}, nil
	}
}

// check walks the whole block map like qemu-img check: entries that point outside the
// image, blocks used twice, and a wrong blocks-allocated count are corruptions. Beyond
// qemu, a block stored past the end of the file is one too.
func (c *vdiCore) check(r *Report) {
	// used[i] records that data block i is taken; it is sized by the blocks the file can
	// hold, so that a hostile header cannot make it large.
	limit := c.blocks
	if c.sizeKnown {
		// a block that starts before the end of the file is there, if only in part
		limit = min(limit, max(0, (c.fileSize-c.dataOff+c.stride-1)/c.stride))
	}
	taken := make([]uint64, (limit+63)/64)
	owner := make(map[uint32]int64)
	var allocated int64
	for first := int64(0); first < c.blocks; first += vdiPageEntries {
		n := min(int64(vdiPageEntries), c.blocks-first)
		raw, err := readAt(c.r, c.bmapOff+4*first, 4*n, VDI, "block map")
		if err != nil {
			r.Add(CheckError, "block map", c.bmapOff+4*first, "cannot read the block map: %v", err)
			return
		}
		for k := range n {
			e := binary.LittleEndian.Uint32(raw[4*k:])
			if e >= vdiDiscarded {
				continue
			}
			blk := first + k
			at := c.bmapOff + 4*blk
			if int64(e) >= c.blocks {
				r.Add(Corruption, "block map", at, "block %d points to data block %d, beyond the %d blocks of the image", blk, e, c.blocks)
				continue
			}
			allocated++
			if int64(e) >= limit {
				r.Add(Corruption, "block map", at, "block %d is stored at offset %d, past the end of the file (%d bytes)", blk, c.dataOff+int64(e)*c.stride, c.fileSize)
				continue
			}
			if taken[e/64]&(1<<(e%64)) != 0 {
				if len(owner) < 1<<16 {
					r.Add(Corruption, "block map", at, "block %d uses data block %d, already used by block %d", blk, e, owner[e])
				} else {
					r.Add(Corruption, "block map", at, "block %d uses data block %d, already used by another block", blk, e)
				}
				continue
			}
			taken[e/64] |= 1 << (e % 64)
			if len(owner) < 1<<16 {
				owner[e] = blk
			}
		}
	}
	if allocated != int64(c.info.BlocksAllocated) {
		r.Add(Corruption, "header", 0x184, "blocks allocated is %d, but the block map allocates %d", c.info.BlocksAllocated, allocated)
	}
}
