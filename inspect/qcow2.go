package inspect

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/bits"
	"path/filepath"
	"strings"
)

// qcow2 (docs/interop/qcow2.txt in qemu): a header in the first cluster, header extensions
// after it, a two-level cluster map (L1 table, L2 tables), a two-level refcount structure,
// internal snapshots (each with its own L1 table), and optional compression, encryption,
// extended L2 entries with subclusters, backing files and an external data file.
//
// This file parses the header, its extensions and the snapshot table (Open) and describes
// them (Info, Safety). qcow2_read.go maps guest offsets (lookup) and qcow2_check.go
// rebuilds the refcounts like `qemu-img check`.
//
// Where qemu refuses to open an image, Open returns a FormatError with qemu's reason; where
// qemu opens it but it is dangerous (backing file, data file, unknown features, corrupt
// bit, structures past the end of the file), Open succeeds and Safety says why.

// Header field offsets and the spec's constants.
const (
	qcow2Magic = 0x514649fb // "QFI\xfb"

	qcow2V2HeaderLen   = 72
	qcow2V3HeaderLen   = 104 // the minimum for version 3
	qcow2HeaderReadLen = 112 // qemu's QCowHeader: version 3 fields plus compression_type and padding

	qcow2MinClusterBits = 9  // 512 B
	qcow2MaxClusterBits = 21 // 2 MiB: qemu's implementation limit

	qcow2MaxL1Bytes       = 32 << 20 // QCOW_MAX_L1_SIZE
	qcow2MaxRefTableBytes = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	qcow2MaxSnapshots     = 65536    // QCOW_MAX_SNAPSHOTS
	qcow2MaxSnapshotsSize = 1024 * qcow2MaxSnapshots
	qcow2MaxSnapshotExtra = 1024 // QCOW_MAX_SNAPSHOT_EXTRA_DATA
	qcow2SnapHeaderLen    = 40
	qcow2MaxBackingName   = 1023
	qcow2MaxBackingFormat = 15 // qemu keeps it in a char[16]
	qcow2MaxBitmaps       = 65535
	qcow2MaxBitmapDirSize = 1024 * qcow2MaxBitmaps

	qcow2L1OffsetMask   = 0x00fffffffffffe00
	qcow2L1ReservedMask = 0x7f000000000001ff
	qcow2L2OffsetMask   = 0x00fffffffffffe00
	qcow2L2StdReserved  = 0x3f000000000001fe
	qcow2RefOffsetMask  = 0xfffffffffffffe00
	qcow2RefReserved    = 0x1ff
	qcow2Copied         = uint64(1) << 63
	qcow2CompressedBit  = uint64(1) << 62
	qcow2ZeroBit        = uint64(1)

	qcow2Subclusters = 32 // per cluster with extended L2 entries
)

// Feature bits.
const (
	qcow2IncompatDirty       = 1 << 0
	qcow2IncompatCorrupt     = 1 << 1
	qcow2IncompatDataFile    = 1 << 2
	qcow2IncompatCompression = 1 << 3
	qcow2IncompatExtL2       = 1 << 4
	qcow2IncompatKnown       = 0x1f

	qcow2CompatLazyRefcounts = 1 << 0

	qcow2AutoclearBitmaps = 1 << 0
	qcow2AutoclearRawData = 1 << 1
)

// Header extension types.
const (
	qcow2ExtEnd          = 0x00000000
	qcow2ExtBackingFmt   = 0xe2792aca
	qcow2ExtFeatureTable = 0x6803f857
	qcow2ExtBitmaps      = 0x23852875
	qcow2ExtCrypto       = 0x0537be77
	qcow2ExtDataFile     = 0x44415441
)

var qcow2FeatureNames = [3][]string{
	{"dirty bit", "corrupt bit", "external data file", "compression type", "extended L2 entries"},
	{"lazy refcounts"},
	{"bitmaps", "raw external data"},
}

// QCOW2Info is the format-specific detail of a qcow2 image. The keys qemu-img prints in its
// format-specific data keep qemu's names; the rest is glimpse's own.
type QCOW2Info struct {
	Compat          string        `json:"compat"`
	CompressionType string        `json:"compression-type"`
	LazyRefcounts   *bool         `json:"lazy-refcounts,omitempty"`
	Bitmaps         []QCOW2Bitmap `json:"bitmaps,omitempty"`
	RefcountBits    int           `json:"refcount-bits"`
	DataFile        string        `json:"data-file,omitempty"`
	DataFileRaw     *bool         `json:"data-file-raw,omitempty"`
	Encrypt         *QCOW2Encrypt `json:"encrypt,omitempty"`
	Corrupt         *bool         `json:"corrupt,omitempty"`
	ExtendedL2      *bool         `json:"extended-l2,omitempty"`

	Version               int                `json:"version"`
	ClusterBits           int                `json:"cluster-bits"`
	RefcountOrder         int                `json:"refcount-order"`
	HeaderLength          int                `json:"header-length"`
	EncryptionMethod      string             `json:"encryption-method"`
	L1Size                uint32             `json:"l1-size"`
	L1TableOffset         int64              `json:"l1-table-offset"`
	RefcountTableOffset   int64              `json:"refcount-table-offset"`
	RefcountTableClusters uint32             `json:"refcount-table-clusters"`
	IncompatibleFeatures  QCOW2Features      `json:"incompatible-features"`
	CompatibleFeatures    QCOW2Features      `json:"compatible-features"`
	AutoclearFeatures     QCOW2Features      `json:"autoclear-features"`
	FeatureNameTable      []QCOW2FeatureName `json:"feature-name-table,omitempty"`
	SnapshotCount         int                `json:"snapshot-count"`
	SnapshotsOffset       int64              `json:"snapshots-offset,omitempty"`
	Snapshots             []QCOW2Snapshot    `json:"snapshots,omitempty"`
	Extensions            []QCOW2Extension   `json:"header-extensions,omitempty"`
}

// QCOW2Features is one of the three feature bitmaps: its raw value, the names of the bits
// set, and the bits glimpse does not know.
type QCOW2Features struct {
	Raw     uint64   `json:"raw"`
	Names   []string `json:"names,omitempty"`
	Unknown uint64   `json:"unknown,omitempty"`
}

// QCOW2FeatureName is one entry of the feature name table extension.
type QCOW2FeatureName struct {
	Type string `json:"type"` // incompatible, compatible, autoclear, or the raw number
	Bit  int    `json:"bit"`
	Name string `json:"name"`
}

// QCOW2Snapshot is one internal snapshot.
type QCOW2Snapshot struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	DateSec       uint32 `json:"date-sec"`
	DateNsec      uint32 `json:"date-nsec"`
	VMClockNsec   uint64 `json:"vm-clock-nsec"`
	VMStateSize   uint64 `json:"vm-state-size"`
	DiskSize      uint64 `json:"disk-size,omitempty"`
	L1TableOffset uint64 `json:"l1-table-offset"`
	L1Size        uint32 `json:"l1-size"`
}

// QCOW2Extension is one header extension: its type, where its data starts, how long it is.
type QCOW2Extension struct {
	Type   uint32 `json:"type"`
	Name   string `json:"name"`
	Offset int64  `json:"offset"`
	Length uint32 `json:"length"`
}

// QCOW2Bitmap is one persistent dirty bitmap, as qemu-img lists it.
type QCOW2Bitmap struct {
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
	Flags       []string `json:"flags"`
}

// QCOW2Encrypt describes the encryption of an encrypted image (its payload cannot be read).
type QCOW2Encrypt struct {
	Format        string `json:"format"` // aes or luks
	CipherAlg     string `json:"cipher-alg,omitempty"`
	CipherMode    string `json:"cipher-mode,omitempty"`
	IVGenAlg      string `json:"ivgen-alg,omitempty"`
	IVGenHashAlg  string `json:"ivgen-hash-alg,omitempty"`
	HashAlg       string `json:"hash-alg,omitempty"`
	UUID          string `json:"uuid,omitempty"`
	PayloadOffset int64  `json:"payload-offset,omitempty"`
	HeaderOffset  int64  `json:"header-offset,omitempty"`
	HeaderLength  int64  `json:"header-length,omitempty"`
}

// qcow2Header holds the header fields as stored.
type qcow2Header struct {
	version          uint32
	backingOff       uint64
	backingSize      uint32
	clusterBits      uint32
	size             uint64
	cryptMethod      uint32
	l1Size           uint32
	l1Off            uint64
	refTableOff      uint64
	refTableClusters uint32
	nbSnapshots      uint32
	snapshotsOff     uint64
	incompat         uint64
	compat           uint64
	autoclear        uint64
	refcountOrder    uint32
	headerLength     uint32
	compressionType  uint8
}

// qcow2Snap is a parsed snapshot table entry.
type qcow2Snap struct {
	QCOW2Snapshot
	extraSize uint32
}

func probeQCOW2(p *probeData) bool {
	b := p.at(0, 4)
	return b != nil && binary.BigEndian.Uint32(b) == qcow2Magic
}

// qcow2Core is an opened qcow2 image.
type qcow2Core struct {
	name      string
	r         io.ReaderAt
	fileSize  int64
	sizeKnown bool

	h       qcow2Header
	cb      uint  // cluster bits
	cs      int64 // cluster size
	l2Bits  uint  // log2 of the entries in one L2 table
	extL2   bool
	subBits uint // log2 of the subcluster size (cb when there are no subclusters)
	virtual int64

	csizeShift uint
	csizeMask  uint64
	coffMask   uint64

	backingName   string
	backingFormat string
	dataFileName  string
	hasDataFile   bool
	compression   uint8
	cryptoOff     uint64
	cryptoLen     uint64
	hasCryptoExt  bool
	bitmapsOK     bool // the bitmaps extension is present and consistent (autoclear bit)
	nbBitmaps     uint32
	bitmapDirOff  uint64
	bitmapDirSize uint64

	snaps     []qcow2Snap
	snapsSize int64 // bytes of the snapshot table, as qemu counts them
	snapErr   string
	snapsRead bool

	info  QCOW2Info
	finds []Finding

	// reading: see qcow2_read.go
	readErr    error // the whole image cannot be read (unknown incompatible features)
	cryptErr   error // guest data is encrypted
	compErr    error // compressed clusters cannot be decoded (unknown compression type)
	hasBacking bool
	backing    *disk
	backingErr error
	data       io.ReaderAt // where data clusters live: the image or the external data file
	dataErr    error
	l1         qcow2L1
	l2c        qcow2L2Cache
	zc         qcow2ZCache
	comp       qcow2CompReader
}

func openQCOW2(o *opener) (core, error) {
	if !probeQCOW2(o.probe) {
		return nil, wrongFormat(QCOW2, "no QFI\\xfb magic")
	}
	c := &qcow2Core{name: o.name, r: o.r, fileSize: o.size, sizeKnown: o.sizeKnown}
	hb := make([]byte, qcow2HeaderReadLen)
	if err := c.readFull(hb, 0); err != nil {
		return nil, fmt.Errorf("reading the qcow2 header: %w", err)
	}
	if err := c.parseHeader(o, hb); err != nil {
		return nil, err
	}
	if err := c.parseExtensions(o); err != nil {
		return nil, err
	}
	if err := c.readBackingName(o); err != nil {
		return nil, err
	}
	if err := c.checkFeatures(o); err != nil {
		return nil, err
	}
	// The snapshot table, the bitmap directory and the LUKS header may lie anywhere in the
	// file, often at its end. While a stream is still arriving, a read of them that fails
	// (its bytes have not come yet; the stream keeps them for the final parse) leaves them
	// undescribed, so that what the header says can be decided early. Once the size is
	// known, read errors pass through.
	if err := c.readSnapshots(); err != nil && o.sizeKnown {
		return nil, err
	}
	if err := c.readBitmaps(); err != nil && o.sizeKnown {
		return nil, err
	}
	if err := c.buildInfo(); err != nil && o.sizeKnown {
		return nil, err
	}
	c.safety(o)
	c.setupReads(o)
	return c, nil
}

// readFull fills p from offset off of the image file. Bytes past the end of a file whose
// size is known read as zeros, as qemu's block layer reads them; other errors (including a
// stream's "not seen yet") pass through.
func (c *qcow2Core) readFull(p []byte, off int64) error {
	if c.sizeKnown {
		avail := c.fileSize - off
		if avail <= 0 {
			clear(p)
			return nil
		}
		if avail < int64(len(p)) {
			clear(p[avail:])
			p = p[:avail]
		}
	}
	got, err := c.r.ReadAt(p, off)
	if got == len(p) {
		return nil
	}
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		clear(p[got:])
		return nil
	}
	return err
}

func (c *qcow2Core) parseHeader(o *opener, b []byte) error {
	be := binary.BigEndian
	h := &c.h
	h.version = be.Uint32(b[4:])
	h.backingOff = be.Uint64(b[8:])
	h.backingSize = be.Uint32(b[16:])
	h.clusterBits = be.Uint32(b[20:])
	h.size = be.Uint64(b[24:])
	h.cryptMethod = be.Uint32(b[32:])
	h.l1Size = be.Uint32(b[36:])
	h.l1Off = be.Uint64(b[40:])
	h.refTableOff = be.Uint64(b[48:])
	h.refTableClusters = be.Uint32(b[56:])
	h.nbSnapshots = be.Uint32(b[60:])
	h.snapshotsOff = be.Uint64(b[64:])

	switch h.version {
	case 2, 3:
	case 1:
		return o.ferr(QCOW2, "header", "version", 4, h.version, "is the original qcow format, which glimpse does not read (qemu calls it qcow)")
	default:
		return o.ferr(QCOW2, "header", "version", 4, h.version, "unsupported (qcow2 has versions 2 and 3)")
	}
	if h.clusterBits < qcow2MinClusterBits || h.clusterBits > qcow2MaxClusterBits {
		return o.ferr(QCOW2, "header", "cluster_bits", 20, h.clusterBits, "out of range (%d to %d: 512 B to 2 MiB clusters)", qcow2MinClusterBits, qcow2MaxClusterBits)
	}
	c.cb = uint(h.clusterBits)
	c.cs = int64(1) << c.cb
	if h.version == 2 {
		h.refcountOrder = 4
		h.headerLength = qcow2V2HeaderLen
	} else {
		h.incompat = be.Uint64(b[72:])
		h.compat = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLength = be.Uint32(b[100:])
		if h.headerLength < qcow2V3HeaderLen {
			return o.ferr(QCOW2, "header", "header_length", 100, h.headerLength, "too short (version 3 needs at least %d bytes)", qcow2V3HeaderLen)
		}
		if h.headerLength%8 != 0 {
			o.log.Warn("qcow2 header_length is not a multiple of 8", "file", o.name, "header_length", h.headerLength)
		}
		if h.headerLength > 104 {
			h.compressionType = b[104]
		}
	}
	if int64(h.headerLength) > c.cs {
		return o.ferr(QCOW2, "header", "header_length", 100, h.headerLength, "exceeds the cluster size %d", c.cs)
	}
	if h.backingOff > uint64(c.cs) {
		return o.ferr(QCOW2, "header", "backing_file_offset", 8, h.backingOff, "lies beyond the first cluster (%d bytes)", c.cs)
	}
	if h.refcountOrder > 6 {
		return o.ferr(QCOW2, "header", "refcount_order", 96, h.refcountOrder, "exceeds 6 (refcounts wider than 64 bits)")
	}
	if h.cryptMethod > 2 {
		return o.ferr(QCOW2, "header", "crypt_method", 32, h.cryptMethod, "unknown encryption method (0 none, 1 AES, 2 LUKS)")
	}
	if h.size > math.MaxInt64 {
		return o.ferr(QCOW2, "header", "size", 24, h.size, "exceeds the largest file offset")
	}
	c.extL2 = h.incompat&qcow2IncompatExtL2 != 0
	entryBits := uint(3)
	c.subBits = c.cb
	if c.extL2 {
		entryBits = 4
		c.subBits = c.cb - 5
		if c.subBits < qcow2MinClusterBits {
			return o.ferr(QCOW2, "header", "cluster_bits", 20, h.clusterBits, "too small for extended L2 entries (subclusters of %d bytes; at least 16 KiB clusters are needed)", int64(1)<<c.subBits)
		}
	}
	c.l2Bits = c.cb - entryBits
	c.virtual = int64(h.size) &^ 511 // qemu counts whole 512-byte sectors
	c.csizeShift = 62 - (c.cb - 8)
	c.csizeMask = uint64(1)<<(c.cb-8) - 1
	c.coffMask = uint64(1)<<c.csizeShift - 1

	// L1 table: big enough for the virtual size, within qemu's limit, aligned.
	if uint64(h.l1Size) > qcow2MaxL1Bytes/8 {
		return o.ferr(QCOW2, "header", "l1_size", 36, h.l1Size, "too large (qemu's limit is %d entries)", qcow2MaxL1Bytes/8)
	}
	shift := c.cb + c.l2Bits
	need := (h.size + (uint64(1)<<shift - 1)) >> shift
	if need > math.MaxInt32 {
		return o.ferr(QCOW2, "header", "size", 24, h.size, "too large for the cluster size")
	}
	if uint64(h.l1Size) < need {
		return o.ferr(QCOW2, "header", "l1_size", 36, h.l1Size, "too small for the virtual size %d (needs %d entries)", h.size, need)
	}
	if err := c.validateTable(o, "l1_table_offset", 40, h.l1Off, uint64(h.l1Size), 8); err != nil {
		return err
	}
	// Refcount table.
	if h.refTableClusters == 0 {
		return o.ferr(QCOW2, "header", "refcount_table_clusters", 56, h.refTableClusters, "the image has no refcount table")
	}
	if uint64(h.refTableClusters) > qcow2MaxRefTableBytes>>c.cb {
		return o.ferr(QCOW2, "header", "refcount_table_clusters", 56, h.refTableClusters, "too large (qemu's limit is %d bytes)", qcow2MaxRefTableBytes)
	}
	if err := c.validateTable(o, "refcount_table_offset", 48, h.refTableOff, uint64(h.refTableClusters), uint64(c.cs)); err != nil {
		return err
	}
	// Snapshot table pointer.
	if h.nbSnapshots > qcow2MaxSnapshots {
		return o.ferr(QCOW2, "header", "nb_snapshots", 60, h.nbSnapshots, "too many snapshots (qemu's limit is %d)", qcow2MaxSnapshots)
	}
	if err := c.validateTable(o, "snapshots_offset", 64, h.snapshotsOff, uint64(h.nbSnapshots), qcow2SnapHeaderLen); err != nil {
		return err
	}
	return nil
}

// validateTable is qemu's qcow2_validate_table: aligned to a cluster and not overflowing.
// Whether the table lies inside the file is a safety finding, not an error (qemu reads
// zeros there).
func (c *qcow2Core) validateTable(o *opener, field string, at int64, off, entries, entryLen uint64) error {
	size := entries * entryLen // entries and entryLen are bounded by the caller
	if off > math.MaxInt64-size {
		return o.ferr(QCOW2, "header", field, at, off, "table ends beyond the largest file offset")
	}
	if off&uint64(c.cs-1) != 0 {
		return o.ferr(QCOW2, "header", field, at, off, "not aligned to a cluster (%d bytes)", c.cs)
	}
	return nil
}

// parseExtensions walks the header extensions from header_length to the backing file name
// (or the end of the first cluster), as qemu's qcow2_read_extensions does.
func (c *qcow2Core) parseExtensions(o *opener) error {
	end := uint64(c.cs)
	if c.h.backingOff != 0 {
		end = c.h.backingOff
	}
	off := uint64(c.h.headerLength)
	var eh [8]byte
	for n := 0; off < end; n++ {
		if c.sizeKnown && int64(off) >= c.fileSize {
			break // zeros past the end: the end marker
		}
		if off+8 > end {
			return o.ferr(QCOW2, "header extension", "", int64(off), nil, "header runs past the end of the extension area (%d)", end)
		}
		if err := c.readFull(eh[:], int64(off)); err != nil {
			return fmt.Errorf("reading a qcow2 header extension at %d: %w", off, err)
		}
		typ := binary.BigEndian.Uint32(eh[:])
		length := binary.BigEndian.Uint32(eh[4:])
		dataOff := off + 8
		if typ == qcow2ExtEnd {
			break
		}
		if uint64(length) > end-dataOff {
			return o.ferr(QCOW2, "header extension", "length", int64(off+4), length, "extension %#x runs past the end of the extension area (%d)", typ, end)
		}
		// end <= cluster size <= 2 MiB, so length is bounded here.
		data := make([]byte, length)
		if err := c.readFull(data, int64(dataOff)); err != nil {
			return fmt.Errorf("reading qcow2 header extension %#x at %d: %w", typ, off, err)
		}
		c.info.Extensions = append(c.info.Extensions, QCOW2Extension{Type: typ, Name: qcow2ExtName(typ), Offset: int64(dataOff), Length: length})
		if err := c.extension(o, typ, data, int64(dataOff)); err != nil {
			return err
		}
		off = dataOff + (uint64(length)+7)&^7
	}
	return nil
}

func qcow2ExtName(typ uint32) string {
	switch typ {
	case qcow2ExtBackingFmt:
		return "backing file format"
	case qcow2ExtFeatureTable:
		return "feature name table"
	case qcow2ExtBitmaps:
		return "bitmaps"
	case qcow2ExtCrypto:
		return "full disk encryption header pointer"
	case qcow2ExtDataFile:
		return "external data file name"
	}
	return "unknown"
}

func (c *qcow2Core) extension(o *opener, typ uint32, data []byte, at int64) error {
	be := binary.BigEndian
	switch typ {
	case qcow2ExtBackingFmt:
		if len(data) > qcow2MaxBackingFormat {
			return o.ferr(QCOW2, "backing file format extension", "length", at-4, len(data), "too long (at most %d bytes)", qcow2MaxBackingFormat)
		}
		c.backingFormat = cstring(data)
	case qcow2ExtFeatureTable:
		for i := 0; i+48 <= len(data); i += 48 {
			e := data[i : i+48]
			t := fmt.Sprint(e[0])
			if int(e[0]) < len(qcow2FeatureNames) {
				t = [...]string{"incompatible", "compatible", "autoclear"}[e[0]]
			}
			c.info.FeatureNameTable = append(c.info.FeatureNameTable, QCOW2FeatureName{Type: t, Bit: int(e[1]), Name: cstring(e[2:48])})
		}
	case qcow2ExtBitmaps:
		if len(data) != 24 {
			return o.ferr(QCOW2, "bitmaps extension", "length", at-4, len(data), "must be 24")
		}
		if c.h.autoclear&qcow2AutoclearBitmaps == 0 {
			// Written by a program that does not know bitmaps: qemu ignores them.
			o.log.Warn("qcow2 bitmaps extension without its autoclear bit: the bitmaps are inconsistent", "file", o.name)
			return nil
		}
		nb := be.Uint32(data[0:])
		if be.Uint32(data[4:]) != 0 {
			return o.ferr(QCOW2, "bitmaps extension", "reserved", at+4, be.Uint32(data[4:]), "must be zero")
		}
		if nb > qcow2MaxBitmaps {
			return o.ferr(QCOW2, "bitmaps extension", "nb_bitmaps", at, nb, "exceeds qemu's limit of %d", qcow2MaxBitmaps)
		}
		if nb == 0 {
			return o.ferr(QCOW2, "bitmaps extension", "nb_bitmaps", at, nb, "the extension lists no bitmaps")
		}
		c.bitmapDirSize = be.Uint64(data[8:])
		c.bitmapDirOff = be.Uint64(data[16:])
		if c.bitmapDirOff&uint64(c.cs-1) != 0 || c.bitmapDirOff > qcow2L1OffsetMask {
			return o.ferr(QCOW2, "bitmaps extension", "bitmap_directory_offset", at+16, c.bitmapDirOff, "not aligned to a cluster")
		}
		if c.bitmapDirSize > qcow2MaxBitmapDirSize {
			return o.ferr(QCOW2, "bitmaps extension", "bitmap_directory_size", at+8, c.bitmapDirSize, "exceeds qemu's limit of %d bytes", qcow2MaxBitmapDirSize)
		}
		c.nbBitmaps = nb
		c.bitmapsOK = true
	case qcow2ExtCrypto:
		if c.h.cryptMethod != 2 {
			return o.ferr(QCOW2, "encryption header extension", "", at-8, nil, "only LUKS encryption has one (crypt_method is %d)", c.h.cryptMethod)
		}
		if len(data) != 16 {
			return o.ferr(QCOW2, "encryption header extension", "length", at-4, len(data), "must be 16")
		}
		c.cryptoOff = be.Uint64(data[0:])
		c.cryptoLen = be.Uint64(data[8:])
		if c.cryptoOff&uint64(c.cs-1) != 0 || c.cryptoOff > math.MaxInt64/2 || c.cryptoLen > math.MaxInt64/2 {
			return o.ferr(QCOW2, "encryption header extension", "offset", at, c.cryptoOff, "not aligned to a cluster")
		}
		c.hasCryptoExt = true
	case qcow2ExtDataFile:
		c.dataFileName = string(data) // not NUL-terminated
	}
	return nil
}

func (c *qcow2Core) readBackingName(o *opener) error {
	if c.h.backingOff == 0 {
		return nil
	}
	n := int64(c.h.backingSize)
	if n > qcow2MaxBackingName || n > c.cs-int64(c.h.backingOff) {
		return o.ferr(QCOW2, "header", "backing_file_size", 16, c.h.backingSize, "backing file name too long (at most %d bytes, inside the first cluster)", qcow2MaxBackingName)
	}
	b := make([]byte, n)
	if err := c.readFull(b, int64(c.h.backingOff)); err != nil {
		return fmt.Errorf("reading the qcow2 backing file name: %w", err)
	}
	c.backingName = cstring(b) // qemu stops at a NUL as well
	return nil
}

// checkFeatures applies qemu's rules about feature bits and the fields they govern.
func (c *qcow2Core) checkFeatures(o *opener) error {
	h := &c.h
	c.hasDataFile = h.incompat&qcow2IncompatDataFile != 0
	if !c.hasDataFile && h.autoclear&qcow2AutoclearRawData != 0 {
		return o.ferr(QCOW2, "header", "autoclear_features", 88, fmt.Sprintf("%#x", h.autoclear), "raw external data bit set without an external data file")
	}
	c.compression = h.compressionType
	if h.incompat&qcow2IncompatCompression != 0 {
		if h.compressionType == 0 {
			return o.ferr(QCOW2, "header", "compression_type", 104, h.compressionType, "the compression type bit is set, so the type must not be zlib (0)")
		}
	} else if h.compressionType != 0 {
		return o.ferr(QCOW2, "header", "compression_type", 104, h.compressionType, "a non-zlib compression type needs the compression type feature bit")
	}
	if h.cryptMethod == 2 && !c.hasCryptoExt {
		return o.ferr(QCOW2, "header", "crypt_method", 32, h.cryptMethod, "LUKS encryption without its encryption header extension")
	}
	return nil
}

// readSnapshots reads the snapshot table like qemu's qcow2_read_snapshots. Problems that make
// qemu refuse the image become a FindMalformed finding: the active layer is still readable.
func (c *qcow2Core) readSnapshots() error {
	nb := int(c.h.nbSnapshots)
	if nb == 0 {
		c.snapsRead = true
		return nil
	}
	r := qcow2SeqReader{c: c, off: int64(c.h.snapshotsOff)}
	start := int64(c.h.snapshotsOff)
	var hb [qcow2SnapHeaderLen]byte
	snaps := make([]qcow2Snap, 0, min(nb, 1024))
	for i := 0; i < nb; i++ {
		r.off = alignUp(r.off, 8) // past the end of the file, entries read as zeros (as in qemu)
		if err := r.read(hb[:]); err != nil {
			return fmt.Errorf("reading the qcow2 snapshot table: %w", err)
		}
		be := binary.BigEndian
		var s qcow2Snap
		s.L1TableOffset = be.Uint64(hb[0:])
		s.L1Size = be.Uint32(hb[8:])
		idLen := int(be.Uint16(hb[12:]))
		nameLen := int(be.Uint16(hb[14:]))
		s.DateSec = be.Uint32(hb[16:])
		s.DateNsec = be.Uint32(hb[20:])
		s.VMClockNsec = be.Uint64(hb[24:])
		s.VMStateSize = uint64(be.Uint32(hb[32:]))
		s.extraSize = be.Uint32(hb[36:])
		if s.extraSize > qcow2MaxSnapshotExtra {
			c.snapErr = fmt.Sprintf("snapshot table entry %d has %d bytes of extra data (qemu's limit is %d)", i, s.extraSize, qcow2MaxSnapshotExtra)
			break
		}
		extra := make([]byte, s.extraSize)
		if err := r.read(extra); err != nil {
			return fmt.Errorf("reading the qcow2 snapshot table: %w", err)
		}
		if len(extra) >= 8 {
			s.VMStateSize = be.Uint64(extra[0:])
		}
		if len(extra) >= 16 {
			s.DiskSize = be.Uint64(extra[8:])
		} else {
			s.DiskSize = uint64(c.virtual)
		}
		id := make([]byte, idLen+nameLen)
		if err := r.read(id); err != nil {
			return fmt.Errorf("reading the qcow2 snapshot table: %w", err)
		}
		s.ID, s.Name = string(id[:idLen]), string(id[idLen:])
		if r.off-start > qcow2MaxSnapshotsSize {
			c.snapErr = fmt.Sprintf("the snapshot table is larger than qemu's limit of %d bytes", qcow2MaxSnapshotsSize)
			break
		}
		snaps = append(snaps, s)
	}
	if c.snapErr != "" {
		c.finds = append(c.finds, Finding{FindMalformed, "qcow2 snapshot table at offset " + fmt.Sprint(c.h.snapshotsOff) + ": " + c.snapErr + " (qemu refuses to open the image)"})
		return nil
	}
	c.snaps = snaps
	c.snapsSize = r.off - start
	c.snapsRead = true
	return nil
}

// qcow2SeqReader reads a table sequentially. At open it reads exactly the bytes of each
// field (so that the stream inspector keeps no more than the table); buffered, as Check
// uses it, it reads through a 64 KiB window.
type qcow2SeqReader struct {
	c        *qcow2Core
	off      int64
	buffered bool
	win      []byte
	wOff     int64
}

func (s *qcow2SeqReader) read(p []byte) error {
	const winSize = 64 << 10
	if !s.buffered {
		if s.off < 0 || s.off > math.MaxInt64-int64(len(p)) {
			return fmt.Errorf("offset %d out of range", s.off)
		}
		if err := s.c.readFull(p, s.off); err != nil {
			return err
		}
		s.off += int64(len(p))
		return nil
	}
	for len(p) > 0 {
		if s.off < 0 || s.off > math.MaxInt64-winSize {
			return fmt.Errorf("offset %d out of range", s.off)
		}
		if s.win == nil || s.off < s.wOff || s.off >= s.wOff+int64(len(s.win)) {
			if s.win == nil {
				s.win = make([]byte, winSize)
			}
			s.wOff = s.off
			if err := s.c.readFull(s.win, s.off); err != nil {
				s.win = nil
				return err
			}
		}
		n := copy(p, s.win[s.off-s.wOff:])
		p = p[n:]
		s.off += int64(n)
	}
	return nil
}

// readBitmaps lists the persistent bitmaps for Info (names, granularity, flags). A directory
// that cannot be parsed lists nothing here; Check reports it.
func (c *qcow2Core) readBitmaps() error {
	if !c.bitmapsOK || c.bitmapDirSize == 0 || (c.sizeKnown && !within(int64(c.bitmapDirOff), int64(c.bitmapDirSize), c.fileSize)) {
		return nil
	}
	dir, ok, err := c.parseBitmapDir()
	if err != nil {
		return fmt.Errorf("reading the qcow2 bitmap directory: %w", err)
	}
	if !ok {
		return nil
	}
	for _, b := range dir {
		flags := []string{}
		if b.flags&1 != 0 {
			flags = append(flags, "in-use")
		}
		if b.flags&2 != 0 {
			flags = append(flags, "auto")
		}
		gran := int64(-1)
		if b.granBits < 63 {
			gran = int64(1) << b.granBits
		}
		c.info.Bitmaps = append(c.info.Bitmaps, QCOW2Bitmap{Name: b.name, Granularity: gran, Flags: flags})
	}
	return nil
}

type qcow2BitmapEntry struct {
	tableOff  uint64
	tableSize uint32
	flags     uint32
	granBits  uint8
	name      string
}

// parseBitmapDir reads the bitmap directory (bounded by the extension's checked size); ok
// is false when it cannot be parsed.
func (c *qcow2Core) parseBitmapDir() (_ []qcow2BitmapEntry, ok bool, err error) {
	r := qcow2SeqReader{c: c, off: int64(c.bitmapDirOff)}
	end := int64(c.bitmapDirOff + c.bitmapDirSize)
	var out []qcow2BitmapEntry
	var hb [24]byte
	for i := uint32(0); i < c.nbBitmaps; i++ {
		if r.off+24 > end {
			return out, false, nil
		}
		if err := r.read(hb[:]); err != nil {
			return out, false, err
		}
		be := binary.BigEndian
		e := qcow2BitmapEntry{tableOff: be.Uint64(hb[0:]), tableSize: be.Uint32(hb[8:]), flags: be.Uint32(hb[12:]), granBits: hb[17]}
		nameLen := int64(be.Uint16(hb[18:]))
		extra := int64(be.Uint32(hb[20:]))
		if extra > end-r.off || nameLen > end-r.off-extra {
			return out, false, nil
		}
		r.off += extra
		name := make([]byte, nameLen)
		if err := r.read(name); err != nil {
			return out, false, err
		}
		e.name = string(name)
		r.off = alignUp(r.off, 8)
		out = append(out, e)
	}
	return out, true, nil
}

// buildInfo fills QCOW2Info from the parsed header.
func (c *qcow2Core) buildInfo() error {
	h := &c.h
	in := &c.info
	in.Version = int(h.version)
	in.ClusterBits = int(h.clusterBits)
	in.RefcountOrder = int(h.refcountOrder)
	in.RefcountBits = 1 << h.refcountOrder
	in.HeaderLength = int(h.headerLength)
	in.L1Size = h.l1Size
	in.L1TableOffset = int64(h.l1Off)
	in.RefcountTableOffset = int64(h.refTableOff)
	in.RefcountTableClusters = h.refTableClusters
	in.SnapshotCount = int(h.nbSnapshots)
	if h.nbSnapshots > 0 {
		in.SnapshotsOffset = int64(h.snapshotsOff)
	}
	for _, s := range c.snaps {
		in.Snapshots = append(in.Snapshots, s.QCOW2Snapshot)
	}
	in.EncryptionMethod = [...]string{"none", "aes", "luks"}[h.cryptMethod]
	switch c.compression {
	case 0:
		in.CompressionType = "zlib"
	case 1:
		in.CompressionType = "zstd"
	default:
		in.CompressionType = fmt.Sprintf("unknown (%d)", c.compression)
	}
	in.IncompatibleFeatures = c.features(0, h.incompat)
	in.CompatibleFeatures = c.features(1, h.compat)
	in.AutoclearFeatures = c.features(2, h.autoclear)
	if h.version == 2 {
		in.Compat = "0.10"
	} else {
		in.Compat = "1.1"
		lazy := h.compat&qcow2CompatLazyRefcounts != 0
		corrupt := h.incompat&qcow2IncompatCorrupt != 0
		ext := c.extL2
		in.LazyRefcounts, in.Corrupt, in.ExtendedL2 = &lazy, &corrupt, &ext
		if c.hasDataFile {
			raw := h.autoclear&qcow2AutoclearRawData != 0
			in.DataFileRaw = &raw
			in.DataFile = c.dataFileName
		}
	}
	if h.cryptMethod != 0 {
		e, err := c.describeEncryption()
		in.Encrypt = e
		return err
	}
	return nil
}

func (c *qcow2Core) features(kind int, v uint64) QCOW2Features {
	f := QCOW2Features{Raw: v}
	known := uint64(1)<<len(qcow2FeatureNames[kind]) - 1
	for b := v; b != 0; b &= b - 1 {
		bit := bits.TrailingZeros64(b)
		if bit < len(qcow2FeatureNames[kind]) {
			f.Names = append(f.Names, qcow2FeatureNames[kind][bit])
			continue
		}
		name := fmt.Sprintf("unknown bit %d", bit)
		for _, e := range c.info.FeatureNameTable {
			if e.Bit == bit && e.Type == [...]string{"incompatible", "compatible", "autoclear"}[kind] {
				name = fmt.Sprintf("%s (bit %d)", e.Name, bit)
			}
		}
		f.Names = append(f.Names, name)
	}
	f.Unknown = v &^ known
	return f
}

// describeEncryption reads the LUKS header that the encryption extension points at (qemu
// prints its parameters); AES images have nothing beyond the method.
func (c *qcow2Core) describeEncryption() (*QCOW2Encrypt, error) {
	if c.h.cryptMethod == 1 {
		return &QCOW2Encrypt{Format: "aes"}, nil
	}
	e := &QCOW2Encrypt{Format: "luks", HeaderOffset: int64(c.cryptoOff), HeaderLength: int64(c.cryptoLen)}
	if c.sizeKnown && !within(int64(c.cryptoOff), 208, c.fileSize) {
		return e, nil
	}
	var b [208]byte
	if err := c.readFull(b[:], int64(c.cryptoOff)); err != nil {
		return e, fmt.Errorf("reading the qcow2 LUKS header: %w", err)
	}
	if string(b[:6]) != "LUKS\xba\xbe" || binary.BigEndian.Uint16(b[6:]) != 1 {
		return e, nil
	}
	cipher := cstring(b[8:40])
	mode := cstring(b[40:72])
	keyBits := int(binary.BigEndian.Uint32(b[108:])) * 8
	m, iv, _ := strings.Cut(mode, "-")
	iv, ivHash, _ := strings.Cut(iv, ":")
	if m == "xts" {
		keyBits /= 2
	}
	e.CipherAlg = fmt.Sprintf("%s-%d", cipher, keyBits)
	e.CipherMode, e.IVGenAlg, e.IVGenHashAlg = m, iv, ivHash
	e.HashAlg = cstring(b[72:104])
	e.PayloadOffset = int64(binary.BigEndian.Uint32(b[104:])) * 512
	e.UUID = cstring(b[168:208])
	return e, nil
}

func (c *qcow2Core) size() int64 { return c.virtual }

func (c *qcow2Core) describe(info *Info) {
	info.ClusterSize = c.cs
	info.BackingFilename = c.backingName
	if c.backingName != "" {
		info.BackingFormat = c.backingFormat
	}
	if c.hasDataFile {
		info.DataFile = c.dataFileName
	}
	info.DirtyFlag = c.h.incompat&qcow2IncompatDirty != 0
	info.Encrypted = c.h.cryptMethod != 0
	in := c.info
	info.FormatSpecific = &FormatSpecific{Type: QCOW2, Data: &in}
}

func (c *qcow2Core) findings() []Finding { return c.finds }

// safety lists what makes the image unsafe to hand to a hypervisor. It goes beyond
// OpenStack's format inspector, which looks at the backing file offset, the data file bit
// and the incompatible feature bits of the first 512 bytes only.
func (c *qcow2Core) safety(o *opener) {
	h := &c.h
	if h.backingOff != 0 {
		msg := fmt.Sprintf("the image reads unallocated clusters from the backing file %q", c.backingName)
		if c.backingName == "" {
			msg = "the header points at a backing file name, but the name is empty"
		}
		if c.backingFormat != "" {
			msg += fmt.Sprintf(" (declared format %s)", c.backingFormat)
		} else if c.backingName != "" {
			msg += " (no declared format: qemu would probe it)"
		}
		msg += qcow2PathRisk(c.backingName)
		c.finds = append(c.finds, Finding{FindBackingFile, msg})
	}
	if c.hasDataFile {
		msg := fmt.Sprintf("guest data lives in the external data file %q", c.dataFileName)
		if c.dataFileName == "" {
			msg = "guest data lives in an external data file the image does not name (qemu needs one given on its command line)"
		}
		if h.autoclear&qcow2AutoclearRawData != 0 {
			msg += " (data-file-raw)"
		}
		if c.dataFileName != "" && !filepath.IsAbs(c.dataFileName) {
			msg += "; qemu resolves it against its own working directory, not the image's"
		}
		c.finds = append(c.finds, Finding{FindDataFile, msg + qcow2PathRisk(c.dataFileName)})
	} else if c.dataFileName != "" {
		c.finds = append(c.finds, Finding{FindDataFile, fmt.Sprintf("a header extension names the external data file %q although the data file feature bit is clear (qemu ignores it; other readers may not)%s", c.dataFileName, qcow2PathRisk(c.dataFileName))})
	}
	var unknown []string
	if u := h.incompat &^ qcow2IncompatKnown; u != 0 {
		for _, n := range c.info.IncompatibleFeatures.Names {
			if strings.HasPrefix(n, "unknown") || strings.Contains(n, "(bit ") {
				unknown = append(unknown, n)
			}
		}
		c.readErr = unsupported(QCOW2, "unknown incompatible features %#x", u)
	}
	if c.compression > 1 {
		unknown = append(unknown, fmt.Sprintf("compression type %d", c.compression))
		c.compErr = unsupported(QCOW2, "compression type %d", c.compression)
	}
	if len(unknown) > 0 {
		c.finds = append(c.finds, Finding{FindUnknownFeature, "incompatible features glimpse and qemu do not know: " + strings.Join(unknown, ", ") + " (qemu refuses to open the image)"})
	}
	if h.incompat&qcow2IncompatCorrupt != 0 {
		c.finds = append(c.finds, Finding{FindCorrupt, "the corrupt bit is set: qemu found inconsistent metadata and will open the image only read-only"})
	}
	if h.cryptMethod != 0 {
		c.finds = append(c.finds, Finding{FindEncrypted, fmt.Sprintf("guest data is encrypted (%s)", c.info.EncryptionMethod)})
		c.cryptErr = unsupported(QCOW2, "%s-encrypted data", c.info.EncryptionMethod)
	}
	if c.sizeKnown {
		var past []string
		add := func(what string, off, n uint64) {
			if n == 0 {
				return
			}
			if off > math.MaxInt64 || n > math.MaxInt64 || !within(int64(off), int64(n), c.fileSize) {
				past = append(past, fmt.Sprintf("%s at offset %d (%d bytes)", what, off, n))
			}
		}
		add("header", 0, uint64(h.headerLength))
		if h.backingOff != 0 {
			add("backing file name", h.backingOff, uint64(h.backingSize))
		}
		add("L1 table", h.l1Off, uint64(h.l1Size)*8)
		add("refcount table", h.refTableOff, uint64(h.refTableClusters)<<c.cb)
		if c.snapsRead {
			add("snapshot table", h.snapshotsOff, uint64(c.snapsSize))
		}
		for _, s := range c.snaps {
			add(fmt.Sprintf("L1 table of snapshot %q", s.ID), s.L1TableOffset, uint64(s.L1Size)*8)
		}
		if c.bitmapsOK {
			add("bitmap directory", c.bitmapDirOff, c.bitmapDirSize)
		}
		if c.hasCryptoExt {
			add("encryption header", c.cryptoOff, c.cryptoLen)
		}
		if len(past) > 0 {
			c.finds = append(c.finds, Finding{FindPastEOF, fmt.Sprintf("structures extend past the end of the file (%d bytes): %s", c.fileSize, strings.Join(past, ", "))})
		}
	}
}

// qcow2PathRisk explains what is dangerous about a file name a hypervisor would open.
func qcow2PathRisk(name string) string {
	switch {
	case name == "":
		return ""
	case strings.HasPrefix(name, "json:"):
		return "; the json: pseudo-protocol can make qemu open any file or network resource"
	case strings.Contains(name, "://"):
		return "; it is a URL, which qemu would open over the network"
	case filepath.IsAbs(name) || strings.HasPrefix(name, "/"):
		return "; it is an absolute path on the host"
	case !filepath.IsLocal(name):
		return "; it leaves the image's directory"
	}
	return ""
}
