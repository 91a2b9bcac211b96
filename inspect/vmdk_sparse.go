package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/adler32"
	"io"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/flate"
)

// The hosted sparse extent ("KDMV"): a 512-byte header, an optional embedded descriptor, a
// grain directory (GD) of 32-bit sector offsets of grain tables (GT), each GT holding
// numGTEsPerGT 32-bit sector offsets of grains. A redundant copy of the GD and its GTs may
// follow (flag redundantGD). streamOptimized extents compress each grain with zlib behind
// a 12-byte grain marker (LBA, size) and may keep the real header in a footer at the end
// of the file (gdOffset = GD_AT_END). Layout per VMware's Virtual Disk Format 1.1 and 5.0;
// behaviour matched to qemu's block/vmdk.c.

const (
	vmdkMagic        = "KDMV"
	vmdkCOWDMagic    = "COWD"             // VMFS sparse (VMDK3) extent
	vmdkSESparse     = 0x00000000cafebabe // seSparse constant header magic (LE uint64)
	vmdkGDAtEnd      = math.MaxUint64
	vmdkSector       = 512
	vmdkHeaderSize   = 512
	vmdkFooterSize   = 3 * vmdkSector // footer marker, footer header, end-of-stream marker
	vmdkMarkerHeader = 12             // grain marker: LBA (8) and compressed size (4)

	// Header flags.
	vmdkFlagNewlineTest = 1 << 0
	vmdkFlagRGD         = 1 << 1
	vmdkFlagZeroGrain   = 1 << 2
	vmdkFlagCompressed  = 1 << 16
	vmdkFlagMarkers     = 1 << 17

	vmdkCompressDeflate = 1

	// Marker types of streamOptimized extents.
	vmdkMarkerEOS    = 0
	vmdkMarkerGT     = 1
	vmdkMarkerGD     = 2
	vmdkMarkerFooter = 3

	// Spec and qemu bounds on header fields.
	vmdkMaxGTEs      = 512      // numGTEsPerGT: the spec fixes 512; qemu refuses more
	vmdkCOWDGTEs     = 4096     // grain table entries of a VMFS sparse (COWD) extent
	vmdkMaxGrain     = 0x200000 // grain size in sectors (1 GiB): qemu's limit
	vmdkMaxGDEntries = 32 << 20 // qemu's "L1 size too big"
	vmdkGTEZeroed    = 1        // GTE value of a zeroed grain (zeroed-grain flag)
	vmdkGTCacheSlots = 64       // grain tables cached per extent (at most 128 KiB)
	// vmdkMaxCompressedGrain bounds the grains of compressed extents glimpse reads (qemu
	// allows 1 GiB, and allocates that much per read): every read inflates a whole grain,
	// so the bound is the cost of one read. streamOptimized files use 64 KiB grains.
	vmdkMaxCompressedGrain = 1 << 20
	vmdkMaxOffset          = math.MaxInt64 >> 9 // largest sector number whose byte offset fits int64
)

// vmdkHeader is the decoded hosted sparse extent header (after the magic).
type vmdkHeader struct {
	Version           uint32
	Flags             uint32
	Capacity          uint64 // sectors
	GrainSize         uint64 // sectors
	DescriptorOffset  uint64 // sectors
	DescriptorSize    uint64 // sectors
	NumGTEsPerGT      uint32
	RGDOffset         uint64 // sectors
	GDOffset          uint64 // sectors
	OverHead          uint64 // sectors
	UncleanShutdown   uint8
	NewlineChars      [4]byte
	CompressAlgorithm uint16
}

func decodeVMDKHeader(b []byte) vmdkHeader {
	le := binary.LittleEndian
	h := vmdkHeader{
		Version:           le.Uint32(b[4:]),
		Flags:             le.Uint32(b[8:]),
		Capacity:          le.Uint64(b[12:]),
		GrainSize:         le.Uint64(b[20:]),
		DescriptorOffset:  le.Uint64(b[28:]),
		DescriptorSize:    le.Uint64(b[36:]),
		NumGTEsPerGT:      le.Uint32(b[44:]),
		RGDOffset:         le.Uint64(b[48:]),
		GDOffset:          le.Uint64(b[56:]),
		OverHead:          le.Uint64(b[64:]),
		UncleanShutdown:   b[72],
		CompressAlgorithm: le.Uint16(b[77:]),
	}
	copy(h.NewlineChars[:], b[73:77])
	return h
}

// Header field offsets, for errors.
const (
	vmdkOffVersion    = 4
	vmdkOffFlags      = 8
	vmdkOffCapacity   = 12
	vmdkOffGrain      = 20
	vmdkOffDescOff    = 28
	vmdkOffDescSize   = 36
	vmdkOffNumGTEs    = 44
	vmdkOffRGD        = 48
	vmdkOffGD         = 56
	vmdkOffOverHead   = 64
	vmdkOffCompressAl = 77
)

// vmdkSparse is one hosted sparse extent: the image file itself, or an extent file that a
// descriptor names. Its grain directory and grain tables are read on first use.
type vmdkSparse struct {
	file      string // name for errors
	r         io.ReaderAt
	size      int64
	sizeKnown bool

	head      vmdkHeader  // the header at offset 0
	hdr       vmdkHeader  // the header in force: the footer's when gdOffset is GD_AT_END
	footer    *vmdkHeader // the footer's header, when there is one and it was read
	footerOff int64

	capacity   int64 // bytes
	grain      int64 // bytes
	grainShift uint
	numGTEs    int64
	gtBytes    int64
	gdEntries  int64
	gdOff      int64 // bytes; -1 when it lies in a footer not read yet
	rgdOff     int64 // bytes; 0 when there is no redundant GD
	compressed bool
	markers    bool
	zeroGrain  bool
	gdErr      error // the GD cannot be used at all (too large)

	finds []Finding

	gdMu   sync.Mutex
	gd     atomic.Pointer[vmdkDir]
	gts    vmdkGTCache
	grains vmdkGrains // io.ReaderAt of guest bytes for compressed grains
	cache  vmdkGrainCache
	bufs   sync.Pool // *[]byte of grain bytes, for the grain cache
}

// openVMDKSparse parses the header of a hosted sparse extent (and its footer when it has
// one). It reads at most the header and the last 1536 bytes; the footer only when the size
// is known.
func openVMDKSparse(r io.ReaderAt, size int64, sizeKnown bool, file string) (*vmdkSparse, error) {
	fe := func(structure, field string, off int64, val any, msg string, args ...any) error {
		e := ferr(VMDK, structure, field, off, val, msg, args...)
		e.File = file
		return e
	}
	b, err := readAt(r, 0, vmdkHeaderSize, VMDK, "header")
	if err != nil {
		return nil, err
	}
	if string(b[:4]) != vmdkMagic {
		return nil, wrongFormat(VMDK, "no KDMV magic")
	}
	sp := &vmdkSparse{file: file, r: r, size: size, sizeKnown: sizeKnown, gdOff: -1}
	sp.head = decodeVMDKHeader(b)
	sp.hdr = sp.head
	sp.grains.sp = sp

	// The footer: required when the header says the GD is at the end; compared with the
	// header whenever a streamOptimized file carries one.
	wantFooter := sp.head.GDOffset == vmdkGDAtEnd
	stream := sp.head.CompressAlgorithm == vmdkCompressDeflate || sp.head.Flags&vmdkFlagMarkers != 0
	if sizeKnown && (wantFooter || stream) {
		foot, off, err := sp.readFooter()
		if err != nil {
			return nil, err
		}
		switch {
		case foot != nil:
			sp.footer, sp.footerOff = foot, off
			if wantFooter {
				if foot.GDOffset == vmdkGDAtEnd {
					return nil, fe("footer", "gdOffset", off+vmdkSector+vmdkOffGD, "GD_AT_END", "the footer says the grain directory is at the end too")
				}
				sp.hdr = *foot
			}
			sp.compareFooter()
		case wantFooter:
			return nil, fe("footer", "", max(off, 0), nil, "gdOffset is GD_AT_END but the file does not end with a valid footer (footer marker, header, end-of-stream marker)")
		}
	}
	h := &sp.hdr
	hdrOff := int64(0)
	if sp.footer != nil && wantFooter {
		hdrOff = sp.footerOff + vmdkSector
	}
	switch {
	case h.Version == 0:
		return nil, fe("header", "version", hdrOff+vmdkOffVersion, h.Version, "is not a hosted sparse extent version (1, 2 or 3)")
	case h.Version > 3:
		return nil, unsupported(VMDK, "hosted sparse extent version %d", h.Version)
	}
	if h.NumGTEsPerGT > vmdkMaxGTEs {
		return nil, fe("header", "numGTEsPerGT", hdrOff+vmdkOffNumGTEs, h.NumGTEsPerGT, "exceeds %d (qemu: L2 table size too big)", vmdkMaxGTEs)
	}
	if h.NumGTEsPerGT == 0 {
		return nil, fe("header", "numGTEsPerGT", hdrOff+vmdkOffNumGTEs, h.NumGTEsPerGT, "is zero (qemu: L1 entry size is invalid)")
	}
	if h.GrainSize == 0 {
		return nil, fe("header", "grainSize", hdrOff+vmdkOffGrain, h.GrainSize, "is zero (qemu: L1 entry size is invalid)")
	}
	if h.GrainSize > vmdkMaxGrain {
		return nil, fe("header", "grainSize", hdrOff+vmdkOffGrain, h.GrainSize, "exceeds %d sectors (qemu: invalid granularity)", vmdkMaxGrain)
	}
	if h.GrainSize&(h.GrainSize-1) != 0 {
		return nil, fe("header", "grainSize", hdrOff+vmdkOffGrain, h.GrainSize, "is not a power of two")
	}
	perGT := uint64(h.NumGTEsPerGT) * h.GrainSize
	gdEntries := h.Capacity / perGT
	if h.Capacity%perGT != 0 {
		gdEntries++
	}
	if gdEntries > vmdkMaxGDEntries {
		return nil, fe("header", "capacity", hdrOff+vmdkOffCapacity, h.Capacity, "needs a grain directory of %d entries, more than %d (qemu: L1 size too big)", gdEntries, vmdkMaxGDEntries)
	}
	if h.Capacity > vmdkMaxOffset {
		return nil, fe("header", "capacity", hdrOff+vmdkOffCapacity, h.Capacity, "sectors overflow a 64-bit byte count")
	}
	sp.capacity = int64(h.Capacity) * vmdkSector
	sp.grain = int64(h.GrainSize) * vmdkSector
	for sp.grainShift = 0; int64(1)<<sp.grainShift < sp.grain; sp.grainShift++ {
	}
	sp.numGTEs = int64(h.NumGTEsPerGT)
	sp.gtBytes = sp.numGTEs * 4
	sp.gdEntries = int64(gdEntries)
	sp.compressed = h.CompressAlgorithm == vmdkCompressDeflate
	sp.markers = h.Flags&vmdkFlagMarkers != 0
	sp.zeroGrain = h.Flags&vmdkFlagZeroGrain != 0

	gdBytes := sp.gdEntries * 4
	if h.GDOffset == vmdkGDAtEnd {
		// Only while streaming: the footer has not been seen yet.
		sp.gdOff = -1
	} else {
		if h.GDOffset > vmdkMaxOffset {
			return nil, fe("header", "gdOffset", hdrOff+vmdkOffGD, h.GDOffset, "sectors overflow a 64-bit offset")
		}
		sp.gdOff = int64(h.GDOffset) * vmdkSector
		if sp.pastEOF(sp.gdOff, gdBytes) {
			sp.find(FindPastEOF, "the grain directory (%d bytes at offset %d) extends past the end of the file (%d bytes)", gdBytes, sp.gdOff, sp.size)
		}
	}

	if h.Flags&vmdkFlagRGD != 0 {
		if h.RGDOffset > vmdkMaxOffset {
			return nil, fe("header", "rgdOffset", hdrOff+vmdkOffRGD, h.RGDOffset, "sectors overflow a 64-bit offset")
		}
		sp.rgdOff = int64(h.RGDOffset) * vmdkSector
		if sp.rgdOff != 0 && sp.pastEOF(sp.rgdOff, gdBytes) {
			sp.find(FindPastEOF, "the redundant grain directory (%d bytes at offset %d) extends past the end of the file (%d bytes)", gdBytes, sp.rgdOff, sp.size)
		}
	}
	if h.OverHead > vmdkMaxOffset {
		return nil, fe("header", "overHead", hdrOff+vmdkOffOverHead, h.OverHead, "sectors overflow a 64-bit offset")
	}
	if over := int64(h.OverHead) * vmdkSector; sizeKnown && over > size {
		sp.find(FindPastEOF, "overHead says the metadata takes %d bytes, but the file has %d (qemu: file truncated)", over, size)
	}
	if sp.compressed && sp.grain > vmdkMaxCompressedGrain {
		sp.find(FindUnreadableSection, "compressed grains of %d bytes: glimpse reads compressed grains of at most %d", sp.grain, vmdkMaxCompressedGrain)
	}
	if gdBytes > maxMetadataRead {
		sp.gdErr = unsupported(VMDK, "%s: a grain directory of %d bytes is larger than glimpse reads (%d)", file, gdBytes, maxMetadataRead)
		sp.find(FindTooLarge, "the grain directory is %d bytes, more than glimpse reads (%d)", gdBytes, maxMetadataRead)
	}
	return sp, nil
}

// openVMDKCOWD parses a VMFS sparse extent (magic "COWD", qemu's VMDK3): the disk size,
// the grain size, and a grain directory whose length the header gives, of grain tables of
// 4096 entries. It has no descriptor, no redundant directory and no compression.
func openVMDKCOWD(r io.ReaderAt, size int64, file string) (*vmdkSparse, error) {
	b, err := readAt(r, 0, vmdkHeaderSize, VMDK, "COWD header")
	if err != nil {
		return nil, err
	}
	fe := func(field string, off int64, val any, msg string, args ...any) error {
		e := ferr(VMDK, "COWD header", field, off, val, msg, args...)
		e.File = file
		return e
	}
	le := binary.LittleEndian
	sectors, granularity := le.Uint32(b[12:]), le.Uint32(b[16:])
	gdSector, gdEntries := le.Uint32(b[20:]), le.Uint32(b[24:])
	switch {
	case granularity == 0 || granularity > vmdkMaxGrain:
		return nil, fe("granularity", 16, granularity, "out of range (1 to %d sectors)", vmdkMaxGrain)
	case granularity&(granularity-1) != 0:
		return nil, fe("granularity", 16, granularity, "is not a power of two")
	case gdEntries > vmdkMaxGDEntries:
		return nil, fe("l1dir_size", 24, gdEntries, "exceeds %d (qemu: L1 size too big)", vmdkMaxGDEntries)
	}
	sp := &vmdkSparse{file: file, r: r, size: size, sizeKnown: true,
		capacity: int64(sectors) * vmdkSector, grain: int64(granularity) * vmdkSector,
		numGTEs: vmdkCOWDGTEs, gtBytes: vmdkCOWDGTEs * 4, gdEntries: int64(gdEntries), gdOff: int64(gdSector) * vmdkSector}
	sp.grains.sp = sp
	for sp.grainShift = 0; int64(1)<<sp.grainShift < sp.grain; sp.grainShift++ {
	}
	if gdBytes := sp.gdEntries * 4; sp.pastEOF(sp.gdOff, gdBytes) {
		sp.find(FindPastEOF, "the grain directory (%d bytes at offset %d) extends past the end of the file (%d bytes)", gdBytes, sp.gdOff, sp.size)
	} else if gdBytes > maxMetadataRead {
		sp.gdErr = unsupported(VMDK, "%s: a grain directory of %d bytes is larger than glimpse reads (%d)", file, gdBytes, maxMetadataRead)
	}
	if perGT := sp.numGTEs * sp.grain; satMul(sp.gdEntries, perGT) < sp.capacity {
		sp.find(FindDescriptor, "the grain directory of %d entries covers %d bytes of a %d-byte extent (qemu fails reads beyond)", sp.gdEntries, satMul(sp.gdEntries, perGT), sp.capacity)
	}
	return sp, nil
}

func (sp *vmdkSparse) find(code, format string, args ...any) {
	sp.finds = append(sp.finds, Finding{code, fmt.Sprintf(format, args...)})
}

func (sp *vmdkSparse) pastEOF(off, n int64) bool {
	return sp.sizeKnown && !within(off, n, sp.size)
}

// readFooter reads the last three sectors as qemu does (at the size rounded up to a
// sector, bytes past the end reading as zeros). It returns the footer's header when the
// three sectors are a footer marker, a KDMV header and an end-of-stream marker, nil
// otherwise.
func (sp *vmdkSparse) readFooter() (*vmdkHeader, int64, error) {
	off := alignUp(sp.size, vmdkSector) - vmdkFooterSize
	if off < vmdkHeaderSize {
		return nil, off, nil
	}
	b := make([]byte, vmdkFooterSize)
	if err := readZeroFill(sp.r, b, off); err != nil {
		return nil, off, err
	}
	le := binary.LittleEndian
	mark, hdr, eos := b[:512], b[512:1024], b[1024:]
	if le.Uint32(mark[8:]) != 0 || le.Uint32(mark[12:]) != vmdkMarkerFooter || string(hdr[:4]) != vmdkMagic ||
		le.Uint64(eos) != 0 || le.Uint32(eos[8:]) != 0 || le.Uint32(eos[12:]) != vmdkMarkerEOS {
		return nil, off, nil
	}
	h := decodeVMDKHeader(hdr)
	if !isZero(mark[16:]) || !isZero(eos[16:]) {
		sp.find(FindFooterMismatch, "the footer or end-of-stream marker carries data in its padding")
	}
	return &h, off, nil
}

// compareFooter reports every field where the footer's header disagrees with the header at
// the start of the file (the grain directory offset may differ only when the header says
// GD_AT_END).
func (sp *vmdkSparse) compareFooter() {
	a, b := sp.head, *sp.footer
	var diffs []string
	add := func(name string, x, y any) {
		if x != y {
			diffs = append(diffs, fmt.Sprintf("%s %v vs %v", name, x, y))
		}
	}
	add("version", a.Version, b.Version)
	add("flags", a.Flags, b.Flags)
	add("capacity", a.Capacity, b.Capacity)
	add("grainSize", a.GrainSize, b.GrainSize)
	add("descriptorOffset", a.DescriptorOffset, b.DescriptorOffset)
	add("descriptorSize", a.DescriptorSize, b.DescriptorSize)
	add("numGTEsPerGT", a.NumGTEsPerGT, b.NumGTEsPerGT)
	add("rgdOffset", a.RGDOffset, b.RGDOffset)
	add("overHead", a.OverHead, b.OverHead)
	add("compressAlgorithm", a.CompressAlgorithm, b.CompressAlgorithm)
	if a.GDOffset != vmdkGDAtEnd {
		add("gdOffset", a.GDOffset, b.GDOffset)
	}
	if len(diffs) > 0 {
		sp.find(FindFooterMismatch, "the streamOptimized footer disagrees with the header (header vs footer: %s); readers that trust one or the other see different disks", joinClip(diffs, 4))
	}
}

// joinClip joins at most n strings, saying how many more there are.
func joinClip(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(s[:n], ", "), len(s)-n)
}

// readZeroFill fills b from r at off; bytes past the end of the file read as zeros, as qemu
// reads them. Other errors pass through.
func readZeroFill(r io.ReaderAt, b []byte, off int64) error {
	if off < 0 {
		return fmt.Errorf("negative offset %d", off)
	}
	n, err := r.ReadAt(b, off)
	if n < len(b) {
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		clear(b[n:])
	}
	return nil
}

// vmdkDir is a loaded grain directory: the entries inside the file, and the runs of
// unallocated entries (so that a hole spans every unallocated grain table in one lookup).
type vmdkDir struct {
	ents  []uint32
	holes []vmdkRun // sorted runs of zero entries, [start, end) indices
}

type vmdkRun struct{ start, end int64 }

// holeEnd returns the index of the first allocated entry at or after gi (a zero entry),
// or gdEntries when there is none.
func (d *vmdkDir) holeEnd(gi, gdEntries int64) int64 {
	if gi >= int64(len(d.ents)) {
		return gdEntries
	}
	lo, hi := 0, len(d.holes)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if d.holes[m].end <= gi {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(d.holes) {
		return gi + 1
	}
	if e := d.holes[lo].end; e < int64(len(d.ents)) {
		return e
	}
	return gdEntries
}

// directory returns the grain directory, reading it on first use. Entries that lie past
// the end of the file read as zero (unallocated), as qemu reads them; only the part inside
// the file is held in memory.
func (sp *vmdkSparse) directory() (*vmdkDir, error) {
	if p := sp.gd.Load(); p != nil {
		return p, nil
	}
	if sp.gdErr != nil {
		return nil, sp.gdErr
	}
	if sp.gdOff < 0 {
		return nil, fmt.Errorf("%s: vmdk grain directory: its location is in the footer, which has not been read", sp.file)
	}
	sp.gdMu.Lock()
	defer sp.gdMu.Unlock()
	if p := sp.gd.Load(); p != nil {
		return p, nil
	}
	ents, err := sp.readDirectory(sp.dirOffset())
	if err != nil {
		return nil, err
	}
	d := &vmdkDir{ents: ents}
	for i := int64(0); i < int64(len(ents)); {
		if ents[i] != 0 {
			i++
			continue
		}
		j := i
		for j < int64(len(ents)) && ents[j] == 0 {
			j++
		}
		d.holes = append(d.holes, vmdkRun{i, j})
		i = j
	}
	sp.gd.Store(d)
	return d, nil
}

// dirOffset is where reads take the grain directory from: the primary, unless it is not
// valid (at offset 0, on the header, or past the end of the file) while the redundant one
// is. qemu always reads the primary.
func (sp *vmdkSparse) dirOffset() int64 {
	n := sp.gdEntries * 4
	valid := func(off int64) bool { return off >= vmdkHeaderSize && !sp.pastEOF(off, n) }
	if !valid(sp.gdOff) && sp.rgdOff != 0 && valid(sp.rgdOff) {
		return sp.rgdOff
	}
	return sp.gdOff
}

// readDirectory reads gdEntries 32-bit entries at off, keeping only those inside the file.
func (sp *vmdkSparse) readDirectory(off int64) ([]uint32, error) {
	n := sp.gdEntries
	if sp.sizeKnown {
		if off >= sp.size {
			n = 0
		} else {
			n = min(n, (sp.size-off)/4)
		}
	}
	if n == 0 {
		return []uint32{}, nil
	}
	b, err := readAt(sp.r, off, n*4, VMDK, "grain directory")
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			fe.File = sp.file
		}
		return nil, err
	}
	gd := make([]uint32, n)
	for i := range gd {
		gd[i] = binary.LittleEndian.Uint32(b[i*4:])
	}
	return gd, nil
}

// ---- grain table cache --------------------------------------------------------------

// vmdkGTCache holds recently used grain tables of one extent, keyed by their sector. It is
// a fixed set of slots with clock eviction: hits take a mutex and allocate nothing.
type vmdkGTCache struct {
	mu    sync.Mutex
	index map[uint32]int
	slots []vmdkGTSlot
	hand  int
}

type vmdkGTSlot struct {
	key  uint32
	used bool
	ref  bool
	ents []uint32
}

var vmdkGTBufs = sync.Pool{New: func() any { b := make([]byte, vmdkCOWDGTEs*4); return &b }}

// gtRun inspects the grain table at sector gt from entry i on, and returns the first
// entry and how many consecutive entries form one run: equal for holes and zeroed grains,
// one sector-contiguous grain after another for uncompressed data, a single grain for
// compressed data.
func (sp *vmdkSparse) gtRun(gt uint32, i int64) (first uint32, n int64, err error) {
	c := &sp.gts
	c.mu.Lock()
	if s, ok := c.index[gt]; ok {
		slot := &c.slots[s]
		slot.ref = true
		first, n = sp.run(slot.ents, i)
		c.mu.Unlock()
		return first, n, nil
	}
	c.mu.Unlock()

	bp := vmdkGTBufs.Get().(*[]byte)
	defer vmdkGTBufs.Put(bp)
	b := (*bp)[:sp.gtBytes]
	if err := readZeroFill(sp.r, b, int64(gt)*vmdkSector); err != nil {
		return 0, 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.index[gt]; ok { // another reader loaded it meanwhile
		first, n = sp.run(c.slots[s].ents, i)
		return first, n, nil
	}
	if c.index == nil {
		c.index = make(map[uint32]int, vmdkGTCacheSlots)
		c.slots = make([]vmdkGTSlot, vmdkGTCacheSlots)
	}
	for c.slots[c.hand].used && c.slots[c.hand].ref {
		c.slots[c.hand].ref = false
		c.hand = (c.hand + 1) % len(c.slots)
	}
	idx := c.hand
	c.hand = (c.hand + 1) % len(c.slots)
	slot := &c.slots[idx]
	if slot.used {
		delete(c.index, slot.key)
	}
	if slot.ents == nil {
		slot.ents = make([]uint32, sp.numGTEs)
	}
	for j := range slot.ents {
		slot.ents[j] = binary.LittleEndian.Uint32(b[j*4:])
	}
	slot.key, slot.used, slot.ref = gt, true, true
	c.index[gt] = idx
	first, n = sp.run(slot.ents, i)
	return first, n, nil
}

// run measures the run of entries starting at ents[i]: equal entries for holes and zeroed
// grains, sector-contiguous grains for uncompressed data, any allocated grains for
// compressed data.
func (sp *vmdkSparse) run(ents []uint32, i int64) (uint32, int64) {
	first := ents[i]
	n := int64(1)
	switch {
	case first == 0 || (first == vmdkGTEZeroed && sp.zeroGrain):
		for i+n < int64(len(ents)) && ents[i+n] == first {
			n++
		}
	case sp.compressed:
		// compressed grains are read through vmdkGrains, which follows the table itself
		for i+n < int64(len(ents)) && ents[i+n] != 0 && !(ents[i+n] == vmdkGTEZeroed && sp.zeroGrain) {
			n++
		}
	default:
		step := uint32(sp.grain / vmdkSector)
		for i+n < int64(len(ents)) && ents[i+n] == first+uint32(n)*step && uint64(first)+uint64(n)*uint64(step) <= math.MaxUint32 {
			n++
		}
	}
	return first, n
}

// entry returns the grain table entry of grain g (extent-relative), 0 when unallocated.
func (sp *vmdkSparse) entry(g int64) (uint32, error) {
	d, err := sp.directory()
	if err != nil {
		return 0, err
	}
	gi := g / sp.numGTEs
	if gi >= int64(len(d.ents)) || d.ents[gi] == 0 {
		return 0, nil
	}
	e, _, err := sp.gtRun(d.ents[gi], g%sp.numGTEs)
	return e, err
}

// lookup maps the extent-relative guest offset rel (< limit, the extent's length in the
// disk) to a run.
func (sp *vmdkSparse) lookup(rel, limit int64) (segment, error) {
	end := min(sp.capacity, limit)
	if rel >= end { // a descriptor that claims more than the extent holds
		return segment{kind: KindHole, length: limit - rel, host: -1}, nil
	}
	d, err := sp.directory()
	if err != nil {
		return segment{}, err
	}
	g := rel >> sp.grainShift
	gi := g / sp.numGTEs
	perGT := sp.numGTEs * sp.grain
	if gi >= sp.gdEntries { // only a COWD directory can be shorter than its disk
		return segment{}, &FormatError{File: sp.file, Format: VMDK, Structure: "grain directory", Offset: sp.gdOff, Value: gi,
			Msg: fmt.Sprintf("guest offset %d needs entry %d of a directory of %d", rel, gi, sp.gdEntries)}
	}
	if gi >= int64(len(d.ents)) || d.ents[gi] == 0 {
		// every unallocated grain table from here on is one hole
		next := d.holeEnd(gi, sp.gdEntries)
		return segment{kind: KindHole, length: min(end, satMul(next, perGT)) - rel, host: -1}, nil
	}
	tableEnd := min(end, (gi+1)*perGT)
	first, n, err := sp.gtRun(d.ents[gi], g%sp.numGTEs)
	if err != nil {
		return segment{}, err
	}
	runEnd := min(tableEnd, (g+n)*sp.grain)
	length := runEnd - rel
	inGrain := rel & (sp.grain - 1)
	switch {
	case first == 0:
		return segment{kind: KindHole, length: length, host: -1}, nil
	case first == vmdkGTEZeroed && sp.zeroGrain:
		return segment{kind: KindZero, length: length, host: -1}, nil
	case sp.compressed:
		return segment{kind: KindCompressed, length: length, r: &sp.grains, off: rel, host: -1}, nil
	}
	host := int64(first)*vmdkSector + inGrain
	return segment{kind: KindData, length: length, r: sp.r, off: host, host: host}, nil
}

// ---- compressed grains -------------------------------------------------------------

// vmdkGrains reads the guest bytes of compressed grains: ReadAt's offset is the
// extent-relative guest offset. Each grain is inflated whole (its zlib checksum verified,
// as qemu's uncompress does); reads that cover a grain from its start inflate straight
// into the caller's buffer, partial reads go through a small cache of inflated grains.
type vmdkGrains struct{ sp *vmdkSparse }

func (v *vmdkGrains) ReadAt(p []byte, off int64) (int, error) {
	sp := v.sp
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= sp.capacity {
			return n, io.EOF
		}
		g := pos >> sp.grainShift
		in := pos & (sp.grain - 1)
		chunk := p[n:]
		if rest := min(sp.grain, sp.capacity-g*sp.grain) - in; int64(len(chunk)) > rest {
			chunk = chunk[:rest]
		}
		e, err := sp.entry(g)
		if err != nil {
			return n, err
		}
		if e == 0 || (e == vmdkGTEZeroed && sp.zeroGrain) {
			clear(chunk)
		} else if err := sp.readGrain(g, e, in, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
	}
	return n, nil
}

// vmdkGrainCache keeps a few inflated grains for reads that do not start at a grain's
// first byte (a caller reading in small pieces would otherwise inflate a grain many times).
type vmdkGrainCache struct {
	mu    sync.Mutex
	slots [4]struct {
		g   int64
		n   int64
		buf *[]byte
	}
	next int
}

func (sp *vmdkSparse) readGrain(g int64, e uint32, in int64, p []byte) error {
	if sp.grain > vmdkMaxCompressedGrain {
		return unsupported(VMDK, "%s: compressed grains of %d bytes (glimpse reads at most %d)", sp.file, sp.grain, vmdkMaxCompressedGrain)
	}
	if in == 0 && int64(len(p)) == min(sp.grain, sp.capacity-g*sp.grain) {
		return sp.inflateGrain(g, e, in, p) // the whole grain: straight into p
	}
	c := &sp.cache
	c.mu.Lock()
	for i := range c.slots {
		s := &c.slots[i]
		if s.buf != nil && s.g == g {
			err := grainCopy(p, (*s.buf)[:s.n], in, sp.file, g)
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Unlock()
	bp, _ := sp.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, sp.grain)
		bp = &b
	}
	got, err := sp.inflate(g, e, *bp, 0, -1)
	if err != nil {
		sp.bufs.Put(bp)
		return err
	}
	err = grainCopy(p, (*bp)[:got], in, sp.file, g)
	c.mu.Lock()
	s := &c.slots[c.next]
	c.next = (c.next + 1) % len(c.slots)
	if s.buf != nil {
		sp.bufs.Put(s.buf)
	}
	s.g, s.n, s.buf = g, got, bp
	c.mu.Unlock()
	return err
}

func grainCopy(p, grain []byte, in int64, file string, g int64) error {
	if in+int64(len(p)) > int64(len(grain)) {
		return &FormatError{File: file, Format: VMDK, Structure: "grain", Offset: -1, Value: g,
			Msg: fmt.Sprintf("inflates to %d bytes, the read needs %d", len(grain), in+int64(len(p)))}
	}
	copy(p, grain[in:])
	return nil
}

// inflateGrain inflates grain g (entry e) and copies bytes [in, in+len(p)) of it into p.
func (sp *vmdkSparse) inflateGrain(g int64, e uint32, in int64, p []byte) error {
	got, err := sp.inflate(g, e, p, in, int64(len(p)))
	if err != nil {
		return err
	}
	if got < in+int64(len(p)) {
		return &FormatError{File: sp.file, Format: VMDK, Structure: "grain", Offset: int64(e) * vmdkSector, Value: g,
			Msg: fmt.Sprintf("inflates to %d bytes, the read needs %d", got, in+int64(len(p)))}
	}
	return nil
}

// vmdkInflater is the reusable state for inflating one grain.
type vmdkInflater struct {
	fr   io.ReadCloser // *flate.decompressor, reset for each grain
	br   bytes.Reader
	in   []byte
	mark [vmdkMarkerHeader]byte
	zh   [2]byte // zlib header
	sum  [4]byte // zlib trailer (Adler-32)
	out  vmdkGrainWriter
}

var vmdkInflaters = sync.Pool{New: func() any {
	z := &vmdkInflater{}
	z.fr = flate.NewReader(&z.br)
	z.out.sum = adler32.New()
	return z
}}

// vmdkGrainWriter receives the inflated bytes of one grain: it hashes them all, keeps the
// window [lo, lo+len(dst)) in dst, and refuses more than limit bytes.
type vmdkGrainWriter struct {
	sum   hash.Hash32
	dst   []byte
	lo    int64
	pos   int64
	limit int64
}

var errVMDKGrainTooLong = errors.New("grain inflates to more than the grain size")

func (w *vmdkGrainWriter) Write(b []byte) (int, error) {
	if w.pos+int64(len(b)) > w.limit {
		return 0, errVMDKGrainTooLong
	}
	w.sum.Write(b)
	// copy the overlap of [pos, pos+len(b)) with [lo, lo+len(dst))
	if s, e := max(w.pos, w.lo), min(w.pos+int64(len(b)), w.lo+int64(len(w.dst))); s < e {
		copy(w.dst[s-w.lo:e-w.lo], b[s-w.pos:e-w.pos])
	}
	w.pos += int64(len(b))
	return len(b), nil
}

// inflate inflates grain g, stored at sector e, keeping bytes [lo, lo+n) in dst (n < 0:
// all of it, dst being grain-sized). It returns the grain's inflated length.
func (sp *vmdkSparse) inflate(g int64, e uint32, dst []byte, lo, n int64) (int64, error) {
	at := int64(e) * vmdkSector
	bad := func(field string, val any, format string, args ...any) error {
		return &FormatError{File: sp.file, Format: VMDK, Structure: "grain marker", Field: field, Offset: at, Value: val,
			Msg: fmt.Sprintf(format, args...) + fmt.Sprintf(" (grain %d)", g)}
	}
	z := vmdkInflaters.Get().(*vmdkInflater)
	defer vmdkInflaters.Put(z)
	var size int64
	data := at
	if sp.markers {
		if err := readZeroFill(sp.r, z.mark[:], at); err != nil {
			return 0, err
		}
		size = int64(binary.LittleEndian.Uint32(z.mark[8:]))
		if size == 0 || size > 2*sp.grain {
			return 0, bad("size", size, "compressed size out of range (1 to %d bytes)", 2*sp.grain)
		}
		data += vmdkMarkerHeader
	} else {
		size = sp.grain
	}
	if sp.sizeKnown && data < sp.size {
		size = min(size, sp.size-data)
	}
	// size is at most two grains of at most vmdkMaxCompressedGrain: read it whole
	if int64(cap(z.in)) < size {
		z.in = make([]byte, size)
	}
	in := z.in[:size]
	if err := readZeroFill(sp.r, in, data); err != nil {
		return 0, err
	}
	z.br.Reset(in)
	src := &z.br
	zh := z.zh[:]
	if _, err := io.ReadFull(src, zh); err != nil {
		return 0, bad("", nil, "compressed data truncated")
	}
	if zh[0]&0x0f != 8 || zh[0]>>4 > 7 || (uint16(zh[0])<<8|uint16(zh[1]))%31 != 0 || zh[1]&0x20 != 0 {
		return 0, bad("", fmt.Sprintf("%02x%02x", zh[0], zh[1]), "is not a zlib stream header")
	}
	if lo < 0 || n < 0 {
		lo, n = 0, int64(len(dst))
	}
	z.out.sum.Reset()
	z.out.dst, z.out.lo, z.out.pos, z.out.limit = dst[:n], lo, 0, sp.grain
	if err := z.fr.(flate.Resetter).Reset(src, nil); err != nil {
		return 0, err
	}
	_, err := z.fr.(io.WriterTo).WriteTo(&z.out)
	z.out.dst = nil
	if err != nil {
		if errors.Is(err, errVMDKGrainTooLong) {
			return 0, bad("", nil, "inflates to more than the grain size (%d bytes)", sp.grain)
		}
		var fe *FormatError
		if errors.As(err, &fe) || !isInflateError(err) {
			return 0, err
		}
		return 0, bad("", nil, "deflate data is corrupt: %v", err)
	}
	if _, err := io.ReadFull(src, z.sum[:]); err != nil {
		return 0, bad("", nil, "zlib checksum missing")
	}
	if binary.BigEndian.Uint32(z.sum[:]) != z.out.sum.Sum32() {
		return 0, bad("", nil, "zlib checksum mismatch")
	}
	return z.out.pos, nil
}

// isInflateError reports whether err comes from the deflate data itself (not from reading
// the file).
func isInflateError(err error) bool {
	var ce flate.CorruptInputError
	var ie flate.InternalError
	return errors.As(err, &ce) || errors.As(err, &ie) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}
