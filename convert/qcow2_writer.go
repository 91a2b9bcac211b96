package convert

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"glimpse/inspect"
)

// The qcow2 writer (qemu-img convert -O qcow2).
//
// Options, spelled as qemu-img spells them (-o key=value):
//
//	compat=1.1|v3 (default) or 0.10|v2   header version 3 or 2
//	cluster_size=SIZE                    512 to 2M, a power of two; qemu's suffixes (64k, 2M); default 64k
//	compression_type=zlib|zstd           the method for -c (zstd needs v3: incompatible bit 3 and header byte 104)
//	refcount_bits=1|2|4|8|16|32|64        default 16 (v2: 16 only)
//	lazy_refcounts=on|off                 the compatible feature bit (v3 only); the image is written clean
//	extended_l2=on|off                    subclusters (v3, clusters of 16 KiB and more): the disk
//	                                      is handed over in subclusters (cluster_size/32), and zero
//	                                      subclusters stay unallocated inside allocated clusters
//	preallocation=off                     the only mode (zero clusters are never allocated)
//	encryption=off, data_file_raw=off     accepted as the defaults they are
//
// qemu's backing_file, backing_fmt, data_file, encrypt.*, encryption=on,
// preallocation=metadata|falloc|full and size= are refused with a message: glimpse writes
// self-contained, unencrypted images whose size is the source's.
//
// -c compresses every non-zero cluster as qemu does: raw deflate with a 4 KiB window (what
// qemu's zlib deflateInit2(-12) produces and its inflate expects) or a zstd frame, and a
// cluster whose compressed form is not smaller than cluster_size-1 bytes is stored as a
// normal cluster. Compression runs in the pipeline's workers (Encode); Write appends the
// results in guest order, packed byte after byte into host clusters like qemu's
// qcow2_alloc_bytes, with the compressed-cluster descriptor qemu writes (offset, and the
// number of 512-byte sectors after the first that the data touches).
//
// Layout: the writer is Ordered, so that the same input and options give the same bytes
// whatever the scheduling of the workers. Cluster 0 is the header (written last). Data
// clusters are appended in guest order; each L2 table is appended right after the data
// of its range (the writer holds one L2 table at a time); refcount blocks are appended as
// soon as the clusters they cover are all behind the end of the file (see q2Space); Commit
// appends the last L2 table, the L1 table, the last refcount blocks and the refcount table,
// then writes the header. Memory: one L2 table, the L1 table (at most 32 MiB, qemu's limit,
// 16 KiB for 1 TiB with 64 KiB clusters), the refcount table (8 bytes per refcount block)
// and a 1 MiB write buffer, whatever the amount of data. Nothing is time- or
// random-dependent, so no option is needed to make the output reproducible.
//
// Zero clusters are never allocated, also inside a data run with -S 0 and -c (qemu would
// compress them); without -c, -S 0 allocates every cluster as qemu does.
//
// Every cluster of the file is referenced and counted exactly once (compressed clusters:
// once per compressed cluster that touches them), so qemu-img check reports neither
// errors nor leaks.

const (
	q2Magic          = 0x514649fb
	q2CopiedFlag     = uint64(1) << 63
	q2CompressedFlag = uint64(1) << 62
	q2MaxL1Bytes     = 32 << 20 // qemu's QCOW_MAX_L1_SIZE
	q2HeaderV3Len    = 112      // 104 bytes of fields, the compression type byte, padding to 8
	q2ExtFeatures    = 0x6803f857
)

// qcow2Config is what the -o options and -c ask for.
type qcow2Config struct {
	version       int
	clusterBits   uint
	refcountOrder uint
	zstd          bool
	lazy          bool
	extL2         bool
	compress      bool
	sync          bool
}

func newQCOW2Writer(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	cfg, err := parseQCOW2Options(o)
	if err != nil {
		return nil, err
	}
	if name == "-" {
		return nil, errors.New("qcow2 cannot be written to standard output: its tables are written at the end, so it needs a file")
	}
	out, err := q2Create(name, cfg.sync)
	if err != nil {
		return nil, err
	}
	return newQCOW2On(out, cfg), nil
}

var qcow2Keys = []string{
	"compat", "cluster_size", "compression_type", "refcount_bits", "lazy_refcounts", "preallocation",
	"encryption", "extended_l2", "data_file_raw", "backing_file", "backing_fmt", "data_file", "size",
	"encrypt.format", "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.hash-alg", "encrypt.iter-time",
	"encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.key-secret",
}

func parseQCOW2Options(o FormatOptions) (qcow2Config, error) {
	cfg := qcow2Config{version: 3, clusterBits: 16, refcountOrder: 4, compress: o.Compress, sync: o.Sync}
	used := map[string]bool{}
	bad := func(key, v, why string) error { return fmt.Errorf("qcow2: -o %s=%s: %s", key, v, why) }
	if v, ok := o.take(used, "compat"); ok {
		switch v {
		case "1.1", "v3":
			cfg.version = 3
		case "0.10", "v2":
			cfg.version = 2
		default:
			return cfg, bad("compat", v, "want 1.1 (or v3) or 0.10 (or v2)")
		}
	}
	if v, ok := o.take(used, "cluster_size"); ok {
		n, err := parseQemuSize(v)
		if err != nil || n < 512 || n > 2<<20 || n&(n-1) != 0 {
			return cfg, bad("cluster_size", v, "the cluster size must be a power of two between 512 and 2048k")
		}
		cfg.clusterBits = uint(bits.TrailingZeros64(uint64(n)))
	}
	if v, ok := o.take(used, "compression_type"); ok {
		switch v {
		case "zlib":
		case "zstd":
			cfg.zstd = true
		default:
			return cfg, bad("compression_type", v, "want zlib or zstd")
		}
	}
	if v, ok := o.take(used, "refcount_bits"); ok {
		n, err := strconv.ParseUint(v, 10, 8)
		if err != nil || n == 0 || n > 64 || n&(n-1) != 0 {
			return cfg, bad("refcount_bits", v, "the refcount width must be a power of two and may not exceed 64 bits")
		}
		cfg.refcountOrder = uint(bits.TrailingZeros64(n))
	}
	if err := o.takeBool(used, "qcow2", "lazy_refcounts", &cfg.lazy); err != nil {
		return cfg, err
	}
	if v, ok := o.take(used, "preallocation"); ok && v != "off" {
		switch v {
		case "metadata", "falloc", "full":
			return cfg, bad("preallocation", v, "glimpse writes qcow2 with preallocation=off only (zero clusters stay unallocated)")
		}
		return cfg, bad("preallocation", v, "want off (qemu also knows metadata, falloc and full, which glimpse does not write)")
	}
	for _, key := range []string{"encryption", "extended_l2", "data_file_raw"} {
		v, ok := o.take(used, key)
		if !ok {
			continue
		}
		b, err := parseQemuBool(v)
		if err != nil {
			return cfg, bad(key, v, err.Error())
		}
		if key == "extended_l2" {
			cfg.extL2 = b
			continue
		}
		if b {
			switch key {
			case "encryption":
				return cfg, bad(key, v, "glimpse does not write encrypted qcow2 images")
			default:
				return cfg, bad(key, v, "glimpse does not write qcow2 images with an external data file")
			}
		}
	}
	for _, key := range []string{"backing_file", "backing_fmt"} {
		if v, ok := o.take(used, key); ok {
			return cfg, bad(key, v, "glimpse writes self-contained images: the whole guest disk is converted, without a backing file")
		}
	}
	if v, ok := o.take(used, "data_file"); ok {
		return cfg, bad("data_file", v, "glimpse does not write qcow2 images with an external data file")
	}
	if v, ok := o.take(used, "size"); ok {
		return cfg, bad("size", v, "the virtual size is the source's (resize the output afterwards)")
	}
	for _, key := range qcow2Keys {
		if strings.HasPrefix(key, "encrypt.") {
			if v, ok := o.take(used, key); ok {
				return cfg, bad(key, v, "glimpse does not write encrypted qcow2 images")
			}
		}
	}
	if err := o.unknown(inspect.QCOW2, used, qcow2Keys...); err != nil {
		return cfg, err
	}
	if cfg.version < 3 {
		switch {
		case cfg.refcountOrder != 4:
			return cfg, errors.New("qcow2: refcount widths other than 16 bits require compat=1.1 (v3)")
		case cfg.lazy:
			return cfg, errors.New("qcow2: lazy refcounts require compat=1.1 (v3)")
		case cfg.zstd:
			return cfg, errors.New("qcow2: compression_type=zstd requires compat=1.1 (v3)")
		case cfg.extL2:
			return cfg, errors.New("qcow2: extended_l2=on requires compat=1.1 (v3)")
		}
	}
	if cfg.extL2 && cfg.clusterBits < 14 {
		return cfg, errors.New("qcow2: extended L2 entries need a cluster_size of at least 16k")
	}
	return cfg, nil
}

// parseQemuBool accepts the spellings of qemu's option parser.
func parseQemuBool(v string) (bool, error) {
	switch v {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, errors.New("want on or off")
}

// parseQemuSize parses qemu's size syntax: a decimal number, optionally with a fraction,
// and an optional suffix b, k, M, G, T, P or E (either case; powers of 1024).
func parseQemuSize(v string) (int64, error) {
	num := v
	shift := 0
	if n := len(v); n > 0 {
		if i := strings.IndexByte("bkmgtpe", lower(v[n-1])); i >= 0 {
			num, shift = v[:n-1], 10*i
		}
	}
	if num == "" || strings.ContainsAny(num, "+-eExX_ ") {
		return 0, fmt.Errorf("invalid size %q", v)
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil || n > uint64(1<<63-1)>>shift {
			return 0, fmt.Errorf("invalid size %q", v)
		}
		return int64(n << shift), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", v)
	}
	f *= float64(int64(1) << shift)
	if f >= 1<<62 || f != float64(int64(f)) {
		return 0, fmt.Errorf("invalid size %q", v)
	}
	return int64(f), nil
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// qcow2Writer writes one qcow2 image. Write calls come in guest order (Ordered), one at a
// time; Encode runs in the workers.
type qcow2Writer struct {
	cfg qcow2Config
	out *q2File
	sp  *q2Space

	cs   int64
	l2n  int64 // entries per L2 table
	es   int64 // uint64 words per L2 entry: 1, or 2 with extended L2 entries (the bitmap)
	sub  int64 // subcluster size (extended L2 entries), else the cluster size
	size int64 // virtual size, a multiple of 512
	src  int64 // the source's size: the chunks cover [0, src)
	next int64 // the guest offset the next Write must start at

	l1  []uint64
	l2  []uint64 // the L2 table being filled
	l2i int64    // its index in L1, or -1
	l2b []byte   // serialisation buffer

	curG    int64 // extended L2 without -c: the guest cluster being filled subcluster by subcluster, or -1
	curHost int64 // and its host offset

	deflaters sync.Pool // *flate.Writer
	zenc      *zstd.Encoder
	encoded   sync.Pool // *q2Encoded

	mu       sync.Mutex
	began    bool
	finished bool
}

var (
	_ Writer  = (*qcow2Writer)(nil)
	_ Encoder = (*qcow2Writer)(nil)
)

func newQCOW2On(out *q2File, cfg qcow2Config) *qcow2Writer {
	w := &qcow2Writer{cfg: cfg, out: out, cs: 1 << cfg.clusterBits, l2i: -1, size: -1, curG: -1, es: 1}
	if cfg.extL2 {
		w.es = 2
	}
	w.l2n = w.cs / 8 / w.es
	w.sub = w.cs
	if cfg.extL2 && !cfg.compress {
		w.sub = w.cs / 32 // compressed clusters have no subclusters: -c hands over whole clusters
	}
	return w
}

// Begin checks the size against qemu's limits and reserves the header cluster.
func (w *qcow2Writer) Begin(size int64) (Layout, error) {
	if w.began {
		return Layout{}, fmt.Errorf("%s: Begin called twice", w.out.name)
	}
	w.began = true
	if size < 0 || size > 1<<62 {
		return Layout{}, fmt.Errorf("%s: virtual size %d out of range", w.out.name, size)
	}
	w.src = size
	w.size = alignUp(size, 512) // qemu rounds the size up to whole sectors too
	l1n := (w.size + w.cs*w.l2n - 1) / (w.cs * w.l2n)
	if l1n*8 > q2MaxL1Bytes {
		return Layout{}, fmt.Errorf("%s: a virtual size of %d bytes needs an L1 table beyond qemu's limit of %d bytes with %d-byte clusters (use a larger cluster_size)", w.out.name, w.size, q2MaxL1Bytes, w.cs)
	}
	w.l1 = make([]uint64, l1n)
	w.l2 = make([]uint64, w.cs/8)
	w.l2b = make([]byte, w.cs)
	w.sp = newQ2Space(w.out, w.cfg.clusterBits, w.cfg.refcountOrder)
	if err := w.sp.reserveHeader(); err != nil {
		return Layout{}, err
	}
	if w.cfg.compress {
		if w.cfg.zstd {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(false),
				zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithWindowSize(max(int(w.cs), zstd.MinWindowSize)), zstd.WithLowerEncoderMem(true))
			if err != nil {
				return Layout{}, err
			}
			w.zenc = enc
		}
	}
	return Layout{Ordered: true, BlockSize: w.sub}, nil
}

// q2Encoded is the result of Encode for one chunk: per cluster, whether it is all zeros,
// stored as is, or compressed (a slice of buf).
type q2Encoded struct {
	buf   []byte
	items []q2Item
	pad   []byte // a zero-padded copy of a partial last cluster
}

type q2Item struct {
	kind       byte // q2Zero, q2Plain, q2Packed
	start, end int  // the compressed bytes in buf
}

const (
	q2Zero = iota
	q2Plain
	q2Packed
)

// errQ2NoGain stops a deflate that would not make the cluster smaller.
var errQ2NoGain = errors.New("compressed cluster does not shrink")

// q2Limited appends to a byte slice and fails once it would exceed limit bytes past start.
type q2Limited struct {
	b     *[]byte
	start int
	limit int
}

func (l *q2Limited) Write(p []byte) (int, error) {
	if len(*l.b)-l.start+len(p) > l.limit {
		return 0, errQ2NoGain
	}
	*l.b = append(*l.b, p...)
	return len(p), nil
}

// Encode compresses every non-zero cluster of a data chunk (only with -c).
func (w *qcow2Writer) Encode(c *Chunk) error {
	if !w.cfg.compress {
		return nil
	}
	e, _ := w.encoded.Get().(*q2Encoded)
	if e == nil {
		e = &q2Encoded{}
	}
	e.buf, e.items = e.buf[:0], e.items[:0]
	cs := int(w.cs)
	for off := 0; off < len(c.Data); off += cs {
		cl := c.Data[off:min(off+cs, len(c.Data))]
		if isZero(cl) {
			e.items = append(e.items, q2Item{kind: q2Zero})
			continue
		}
		if len(cl) < cs { // the disk's partial last cluster, compressed as a zero-padded cluster
			if cap(e.pad) < cs {
				e.pad = make([]byte, cs)
			}
			e.pad = e.pad[:cs]
			clear(e.pad[copy(e.pad, cl):])
			cl = e.pad
		}
		start := len(e.buf)
		ok, err := w.compressCluster(e, cl)
		if err != nil {
			return err
		}
		if ok {
			e.items = append(e.items, q2Item{kind: q2Packed, start: start, end: len(e.buf)})
		} else {
			e.buf = e.buf[:start]
			e.items = append(e.items, q2Item{kind: q2Plain})
		}
	}
	c.Encoded = e
	return nil
}

// compressCluster appends the compressed form of cl to e.buf and reports whether it is at
// most cluster_size-1 bytes, qemu's condition for storing it compressed.
func (w *qcow2Writer) compressCluster(e *q2Encoded, cl []byte) (bool, error) {
	limit := int(w.cs) - 1
	start := len(e.buf)
	if w.cfg.zstd {
		e.buf = w.zenc.EncodeAll(cl, e.buf)
		return len(e.buf)-start <= limit, nil
	}
	dst := &q2Limited{b: &e.buf, start: start, limit: limit}
	fw, _ := w.deflaters.Get().(*flate.Writer)
	if fw == nil {
		var err error
		// qemu: deflateInit2(Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, ...): raw
		// deflate whose matches reach back at most 4 KiB.
		if fw, err = flate.NewWriterWindow(dst, 4096); err != nil {
			return false, err
		}
	} else {
		fw.Reset(dst)
	}
	defer w.deflaters.Put(fw)
	_, err := fw.Write(cl)
	if err == nil {
		err = fw.Close()
	}
	if errors.Is(err, errQ2NoGain) {
		return false, nil
	}
	return err == nil, err
}

// Write appends a chunk's clusters in guest order and records them in the L2 table.
func (w *qcow2Writer) Write(c *Chunk) error {
	if c.Off != w.next || c.Len <= 0 || c.Off+c.Len > w.src {
		return fmt.Errorf("%s: internal error: %v out of order (next offset %d, size %d)", w.out.name, c, w.next, w.src)
	}
	if c.Off%w.sub != 0 || ((c.Off+c.Len)%w.sub != 0 && c.Off+c.Len < w.src) {
		return fmt.Errorf("%s: internal error: %v not aligned to %d-byte blocks", w.out.name, c, w.sub)
	}
	w.next = c.Off + c.Len
	if c.Zero() {
		return nil // unallocated: reads as zeros
	}
	if e, ok := c.Encoded.(*q2Encoded); ok {
		err := w.writeEncoded(c, e)
		c.Encoded = nil
		w.encoded.Put(e)
		return err
	}
	if w.sub < w.cs {
		return w.writeSubclusters(c)
	}
	// Plain clusters, appended in runs that stay inside one L2 table's range.
	span := w.cs * w.l2n
	for off := c.Off; off < c.Off+c.Len; {
		end := min(c.Off+c.Len, alignDown(off, span)+span)
		host, err := w.sp.clusters(c.Data[off-c.Off : end-c.Off])
		if err != nil {
			return err
		}
		for g := off; g < end; g += w.cs {
			if err := w.setL2(g/w.cs, uint64(host+g-off)|q2CopiedFlag, q2AllSubclusters); err != nil {
				return err
			}
		}
		off = end
	}
	return nil
}

func (w *qcow2Writer) writeEncoded(c *Chunk, e *q2Encoded) error {
	if int64(len(e.items)) != (c.Len+w.cs-1)/w.cs {
		return fmt.Errorf("%s: internal error: %v encoded as %d clusters", w.out.name, c, len(e.items))
	}
	csizeShift := 62 - (w.cfg.clusterBits - 8)
	for i, it := range e.items {
		g := c.Off/w.cs + int64(i)
		var entry, bitmap uint64
		switch it.kind {
		case q2Zero:
			continue
		case q2Plain:
			lo := int64(i) * w.cs
			host, err := w.sp.clusters(c.Data[lo:min(lo+w.cs, c.Len)])
			if err != nil {
				return err
			}
			entry, bitmap = uint64(host)|q2CopiedFlag, q2AllSubclusters
		default:
			data := e.buf[it.start:it.end]
			host, err := w.sp.compressed(data)
			if err != nil {
				return err
			}
			nsec := uint64((host+int64(len(data))-1)>>9 - host>>9)
			entry = q2CompressedFlag | nsec<<csizeShift | uint64(host)
		}
		if err := w.setL2(g, entry, bitmap); err != nil {
			return err
		}
	}
	return nil
}

// q2AllSubclusters is the bitmap of a cluster whose 32 subclusters are all allocated
// (ignored without extended L2 entries).
const q2AllSubclusters = 1<<32 - 1

// writeSubclusters stores a data chunk of whole subclusters (extended L2 entries without
// -c). A guest cluster gets its host cluster with its first data subcluster; later ones
// go to their place in it, and the subclusters no data chunk covers stay unallocated
// (they read as zeros). Chunks come in guest order, so the cluster being filled is always
// the last one allocated, and nothing else is appended until the guest moves on.
func (w *qcow2Writer) writeSubclusters(c *Chunk) error {
	for off := c.Off; off < c.Off+c.Len; {
		g := off / w.cs
		end := min(c.Off+c.Len, (g+1)*w.cs)
		if g != w.curG {
			if li := g / w.l2n; li != w.l2i {
				if err := w.flushL2(); err != nil {
					return err
				}
				w.l2i = li
			}
			// The previous cluster is complete: refcount blocks may follow it now.
			if err := w.sp.settle(); err != nil {
				return err
			}
			host, err := w.sp.reserve()
			if err != nil {
				return err
			}
			w.curG, w.curHost = g, host
		}
		if err := w.sp.write(w.curHost+off%w.cs, c.Data[off-c.Off:end-c.Off]); err != nil {
			return err
		}
		first, last := off%w.cs/w.sub, (end-1)%w.cs/w.sub
		i := 2 * (g % w.l2n)
		w.l2[i] = uint64(w.curHost) | q2CopiedFlag
		w.l2[i+1] |= (uint64(1)<<(last+1) - 1) &^ (uint64(1)<<first - 1)
		off = end
	}
	return nil
}

// setL2 records guest cluster g's entry, first writing out the L2 table of the previous
// range when g is in a new one.
func (w *qcow2Writer) setL2(g int64, entry, bitmap uint64) error {
	if li := g / w.l2n; li != w.l2i {
		if err := w.flushL2(); err != nil {
			return err
		}
		w.l2i = li
	}
	i := (g % w.l2n) * w.es
	w.l2[i] = entry
	if w.es == 2 {
		w.l2[i+1] = bitmap
	}
	return nil
}

func (w *qcow2Writer) flushL2() error {
	if w.l2i < 0 {
		return nil
	}
	for i, e := range w.l2 {
		binary.BigEndian.PutUint64(w.l2b[8*i:], e)
	}
	off, err := w.sp.clusters(w.l2b)
	if err != nil {
		return err
	}
	w.l1[w.l2i] = uint64(off) | q2CopiedFlag
	clear(w.l2)
	w.l2i = -1
	return nil
}

// Commit appends the last L2 table, the L1 table and the refcount structures, writes the
// header and renames the file into place.
func (w *qcow2Writer) Commit() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return fmt.Errorf("%s: already finished", w.out.name)
	}
	if w.sp == nil {
		return fmt.Errorf("%s: Commit before Begin", w.out.name)
	}
	if w.next != w.src {
		return fmt.Errorf("%s: internal error: the chunks end at %d, the disk at %d", w.out.name, w.next, w.src)
	}
	if err := w.flushL2(); err != nil {
		return err
	}
	var l1Off int64
	if len(w.l1) > 0 {
		// The L1 table (up to 32 MiB) goes out in pieces, not as one more copy of it.
		n := alignUp(int64(8*len(w.l1)), w.cs) / w.cs
		var err error
		if l1Off, err = w.sp.reserveN(n); err != nil {
			return err
		}
		b := make([]byte, 0, 64<<10)
		for i, e := range w.l1 {
			b = binary.BigEndian.AppendUint64(b, e)
			if len(b) == cap(b) || i == len(w.l1)-1 {
				if err := w.sp.write(l1Off+int64(8*i+8-len(b)), b); err != nil {
					return err
				}
				b = b[:0]
			}
		}
		if err := w.sp.settle(); err != nil {
			return err
		}
	}
	rtOff, rtClusters, fileSize, err := w.sp.finish()
	if err != nil {
		return err
	}
	if len(w.l1) == 0 {
		l1Off = rtOff // an empty table: any aligned offset does
	}
	hdr := w.header(l1Off, rtOff, rtClusters)
	if _, err := w.out.wa.WriteAt(hdr, 0); err != nil {
		return writeError(w.out.name, "writing the header", err)
	}
	if err := w.out.finish(fileSize); err != nil {
		return err
	}
	w.finished = true
	w.release()
	return nil
}

// header builds the header and its extensions as qemu 7.2 writes them.
func (w *qcow2Writer) header(l1Off, rtOff, rtClusters int64) []byte {
	be := binary.BigEndian
	h := make([]byte, 72, 1024)
	be.PutUint32(h[0:], q2Magic)
	be.PutUint32(h[4:], uint32(w.cfg.version))
	be.PutUint32(h[20:], uint32(w.cfg.clusterBits))
	be.PutUint64(h[24:], uint64(w.size))
	be.PutUint32(h[36:], uint32(len(w.l1)))
	be.PutUint64(h[40:], uint64(l1Off))
	be.PutUint64(h[48:], uint64(rtOff))
	be.PutUint32(h[56:], uint32(rtClusters))
	if w.cfg.version >= 3 {
		h = h[:q2HeaderV3Len]
		var incompat uint64
		if w.cfg.zstd {
			incompat |= 1 << 3 // compression type
			h[104] = 1
		}
		if w.cfg.extL2 {
			incompat |= 1 << 4 // extended L2 entries
		}
		be.PutUint64(h[72:], incompat)
		if w.cfg.lazy {
			be.PutUint64(h[80:], 1) // compatible: lazy refcounts
		}
		be.PutUint32(h[96:], uint32(w.cfg.refcountOrder))
		be.PutUint32(h[100:], q2HeaderV3Len)
	}
	if w.cfg.version >= 3 && w.cs >= 8192 {
		// The feature name table qemu 7.2 writes into v3 images (it leaves it out of
		// images with clusters under 8 KiB).
		features := []struct {
			kind, bit byte
			name      string
		}{
			{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
			{0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
			{2, 0, "bitmaps"}, {2, 1, "raw external data"},
		}
		ext := make([]byte, 8+48*len(features))
		be.PutUint32(ext[0:], q2ExtFeatures)
		be.PutUint32(ext[4:], uint32(48*len(features)))
		for i, f := range features {
			e := ext[8+48*i:]
			e[0], e[1] = f.kind, f.bit
			copy(e[2:48], f.name)
		}
		h = append(h, ext...)
	}
	return append(h, make([]byte, 8)...) // end of the header extensions
}

// Abort removes the temporary file. It does nothing after a successful Commit.
func (w *qcow2Writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return nil
	}
	w.finished = true
	w.release()
	return w.out.discard()
}

func (w *qcow2Writer) release() {
	if w.zenc != nil {
		w.zenc.Close()
		w.zenc = nil
	}
}
