package inspect

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Reading qcow2 guest data: the L1 table (read on the first lookup), a bounded cache of L2
// tables in which every entry knows where its run ends (so that a lookup is O(1) once its
// table is cached and returns the longest run the table describes), compressed clusters
// decoded into a small cache, subclusters, backing files and the external data file.

// qcow2L2CacheBytes bounds the memory of cached L2 tables (at least two tables are kept,
// whatever the cluster size). 4 MiB holds 40 tables of 64 KiB clusters: 20 GiB of guest.
const qcow2L2CacheBytes = 4 << 20

// qcow2ZCacheBytes bounds the decompressed clusters kept (at least four, at most 32).
const qcow2ZCacheBytes = 8 << 20

// Entry classes of a cached L2 table.
const (
	qcHole       uint8 = iota // unallocated: the backing file, or zeros
	qcZero                    // reads as zeros
	qcData                    // a data cluster at the entry's host offset
	qcCompressed              // a compressed cluster
	qcMixed                   // extended L2: subclusters of several kinds
	qcInvalid                 // a corrupt entry qemu refuses to read
)

const qcow2AllSub = uint32(0xffffffff)

// qcow2L1 is the active L1 table, loaded on first use.
type qcow2L1 struct {
	mu     sync.Mutex
	loaded atomic.Bool
	ent    []uint64 // the entries that describe the virtual disk and lie inside the file
	// nz: entry i needs its L2 table: the offset is not zero and the table is not past the
	// end of the file (which reads as zeros: unallocated), or it is not aligned (an error).
	nz []uint64
}

func (l *qcow2L1) needed(i int64) bool {
	return i < int64(len(l.ent)) && l.nz[i>>6]>>(uint(i)&63)&1 != 0
}

// nextNonZero returns the first index >= i whose L2 table is needed, or len(ent).
func (l *qcow2L1) nextNonZero(i int64) int64 {
	n := int64(len(l.ent))
	for i < n {
		w := l.nz[i>>6] >> (uint(i) & 63)
		if w != 0 {
			return min(n, i+int64(bits.TrailingZeros64(w)))
		}
		i = (i | 63) + 1
	}
	return n
}

func (c *qcow2Core) loadL1() (*qcow2L1, error) {
	l := &c.l1
	if l.loaded.Load() {
		return l, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.loaded.Load() {
		return l, nil
	}
	// Only the entries that map the virtual disk matter for reads; entries past the end of
	// the file read as zeros (unallocated), so they need no memory.
	per := int64(1) << (c.cb + c.l2Bits)
	n := min(int64(c.h.l1Size), (c.virtual+per-1)/per)
	off := int64(c.h.l1Off)
	if c.sizeKnown {
		n = max(0, min(n, (c.fileSize-off)/8))
	}
	ent := make([]uint64, n) // n <= l1_size <= 4M entries (checked at open)
	nz := make([]uint64, (n+63)/64)
	buf := make([]byte, min(n*8, 64<<10))
	for i := int64(0); i < n; {
		k := min(n-i, int64(len(buf))/8)
		if err := c.readFull(buf[:k*8], off+i*8); err != nil {
			return nil, fmt.Errorf("reading the qcow2 L1 table: %w", err)
		}
		for j := int64(0); j < k; j++ {
			e := binary.BigEndian.Uint64(buf[j*8:])
			ent[i+j] = e
			l2 := int64(e & qcow2L1OffsetMask)
			if l2 != 0 && (l2&(c.cs-1) != 0 || !c.sizeKnown || l2 < c.fileSize) {
				nz[(i+j)>>6] |= 1 << (uint(i+j) & 63)
			}
		}
		i += k
	}
	l.ent, l.nz = ent, nz
	l.loaded.Store(true)
	return l, nil
}

// qcow2L2Table is one cached L2 table.
type qcow2L2Table struct {
	off        int64
	raw        []byte   // the table as stored
	cls        []uint8  // class of each entry
	run        []uint32 // index one past the run that entry i starts
	prev, next *qcow2L2Table
}

// qcow2L2Cache is an LRU of L2 tables keyed by file offset, safe for concurrent use.
type qcow2L2Cache struct {
	mu   sync.Mutex
	m    map[int64]*qcow2L2Table
	lru  qcow2L2Table // sentinel: lru.next is the most recent
	max  int
	free []*qcow2L2Table
	// uniform remembers tables that are one run of holes or zeros from end to end, so that
	// a lookup runs across them (however often the L1 table repeats them) without loading
	// them again. Its keys are aligned offsets inside the file: at most a file's worth.
	uniform map[int64]uint8
}

func (q *qcow2L2Cache) init(c *qcow2Core) {
	entries := int64(1) << c.l2Bits
	per := c.cs + entries*5
	q.max = int(max(2, qcow2L2CacheBytes/per))
	q.m = make(map[int64]*qcow2L2Table)
	q.uniform = make(map[int64]uint8)
	q.lru.next, q.lru.prev = &q.lru, &q.lru
}

func (q *qcow2L2Cache) unlink(t *qcow2L2Table) {
	t.prev.next, t.next.prev = t.next, t.prev
}

func (q *qcow2L2Cache) pushFront(t *qcow2L2Table) {
	t.next, t.prev = q.lru.next, &q.lru
	q.lru.next.prev = t
	q.lru.next = t
}

// qcow2L2Ref is what a lookup needs from one L2 entry.
type qcow2L2Ref struct {
	e, bm uint64
	cls   uint8
	run   int
}

// entry returns entry i of the L2 table at off, loading the table on a miss.
func (q *qcow2L2Cache) entry(c *qcow2Core, off int64, i int) (qcow2L2Ref, error) {
	q.mu.Lock()
	if t := q.m[off]; t != nil {
		if q.lru.next != t {
			q.unlink(t)
			q.pushFront(t)
		}
		r := c.l2ref(t, i)
		q.mu.Unlock()
		return r, nil
	}
	var t *qcow2L2Table
	if n := len(q.free); n > 0 {
		t = q.free[n-1]
		q.free = q.free[:n-1]
	}
	q.mu.Unlock()
	if t == nil {
		entries := 1 << c.l2Bits
		t = &qcow2L2Table{raw: make([]byte, c.cs), cls: make([]uint8, entries), run: make([]uint32, entries)}
	}
	if err := c.fillL2(t, off); err != nil {
		return qcow2L2Ref{}, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if t2 := q.m[off]; t2 != nil { // loaded meanwhile by another reader
		if len(q.free) < 4 {
			q.free = append(q.free, t)
		}
		return c.l2ref(t2, i), nil
	}
	q.m[off] = t
	q.pushFront(t)
	if k := t.cls[0]; int(t.run[0]) == len(t.cls) && (k == qcHole || (k == qcZero && !c.hasDataFile)) {
		q.uniform[off] = k
	}
	if len(q.m) > q.max {
		old := q.lru.prev
		q.unlink(old)
		delete(q.m, old.off)
		if len(q.free) < 4 {
			q.free = append(q.free, old)
		}
	}
	return c.l2ref(t, i), nil
}

func (c *qcow2Core) l2ref(t *qcow2L2Table, i int) qcow2L2Ref {
	r := qcow2L2Ref{cls: t.cls[i], run: int(t.run[i])}
	if c.extL2 {
		r.e = binary.BigEndian.Uint64(t.raw[i*16:])
		r.bm = binary.BigEndian.Uint64(t.raw[i*16+8:])
	} else {
		r.e = binary.BigEndian.Uint64(t.raw[i*8:])
	}
	return r
}

// fillL2 reads the L2 table at off into t and classifies its entries.
func (c *qcow2Core) fillL2(t *qcow2L2Table, off int64) error {
	if err := c.readFull(t.raw, off); err != nil {
		return fmt.Errorf("reading the qcow2 L2 table at %d: %w", off, err)
	}
	t.off = off
	n := len(t.cls)
	step := 8
	if c.extL2 {
		step = 16
	}
	for i := 0; i < n; i++ {
		var bm uint64
		e := binary.BigEndian.Uint64(t.raw[i*step:])
		if c.extL2 {
			bm = binary.BigEndian.Uint64(t.raw[i*step+8:])
		}
		t.cls[i] = c.classify(e, bm)
	}
	// Runs, from the end: entry i continues into i+1 when both are holes, both zeros (with
	// host offsets that line up when an external data file must match them), or both data
	// clusters that are contiguous in the file.
	t.run[n-1] = uint32(n)
	for i := n - 2; i >= 0; i-- {
		t.run[i] = uint32(i + 1)
		a, b := t.cls[i], t.cls[i+1]
		if a != b || a > qcData {
			continue
		}
		ea := binary.BigEndian.Uint64(t.raw[i*step:]) & qcow2L2OffsetMask
		eb := binary.BigEndian.Uint64(t.raw[(i+1)*step:]) & qcow2L2OffsetMask
		if a == qcData || (a == qcZero && c.hasDataFile) {
			if eb != ea+uint64(c.cs) {
				continue
			}
		}
		t.run[i] = t.run[i+1]
	}
	return nil
}

// classify maps an L2 entry to its class, following qemu's qcow2_get_cluster_type and
// qcow2_get_subcluster_type (including what qemu refuses to read).
func (c *qcow2Core) classify(e, bm uint64) uint8 {
	if e&qcow2CompressedBit != 0 {
		return qcCompressed
	}
	off := e & qcow2L2OffsetMask
	normal := off != 0 || (c.hasDataFile && e&qcow2Copied != 0)
	unaligned := off&uint64(c.cs-1) != 0
	if !c.extL2 {
		if e&qcow2ZeroBit != 0 {
			if unaligned {
				return qcInvalid
			}
			return qcZero
		}
		if !normal {
			return qcHole
		}
		if unaligned {
			return qcInvalid
		}
		return qcData
	}
	alloc, zero := uint32(bm), uint32(bm>>32)
	if normal {
		if unaligned || alloc&zero != 0 {
			return qcInvalid
		}
		switch {
		case alloc == qcow2AllSub:
			return qcData
		case zero == qcow2AllSub:
			return qcZero
		case alloc == 0 && zero == 0:
			return qcHole
		}
		return qcMixed
	}
	switch {
	case alloc != 0:
		return qcInvalid
	case zero == qcow2AllSub:
		return qcZero
	case zero == 0:
		return qcHole
	}
	return qcMixed
}

func (c *qcow2Core) lookup(off int64) (segment, error) {
	if c.readErr != nil {
		return segment{}, c.readErr
	}
	l1, err := c.loadL1()
	if err != nil {
		return segment{}, err
	}
	cl := off >> c.cb
	l1i := cl >> c.l2Bits
	tableShift := c.cb + c.l2Bits
	if !l1.needed(l1i) {
		return c.hole(off, c.extendRun(l1, l1i+1, qcHole))
	}
	l2off := int64(l1.ent[l1i] & qcow2L1OffsetMask)
	if l2off&(c.cs-1) != 0 {
		return segment{}, ferr(QCOW2, "L1 table", "", int64(c.h.l1Off)+l1i*8, l2off, "L2 table offset is not aligned to a cluster (L1 index %d)", l1i)
	}
	i := int(cl & (int64(1)<<c.l2Bits - 1))
	r, err := c.l2c.entry(c, l2off, i)
	if err != nil {
		return segment{}, err
	}
	base := l1i << tableShift
	cstart := cl << c.cb
	runEnd := base + int64(r.run)<<c.cb
	if r.run == 1<<c.l2Bits && (r.cls == qcHole || (r.cls == qcZero && !c.hasDataFile)) {
		runEnd = c.extendRun(l1, l1i+1, r.cls)
	}
	host := int64(r.e & qcow2L2OffsetMask)
	switch r.cls {
	case qcHole:
		return c.hole(off, runEnd)
	case qcZero:
		if err := c.checkDataFileHost(r.e, cstart, l2off, i); err != nil {
			return segment{}, err
		}
		return segment{kind: KindZero, length: runEnd - off, host: -1}, nil
	case qcData:
		if err := c.checkDataFileHost(r.e, cstart, l2off, i); err != nil {
			return segment{}, err
		}
		return c.dataSeg(off, host+(off-cstart), runEnd-off)
	case qcCompressed:
		return c.compressedSeg(off, cstart+c.cs)
	case qcMixed:
		if err := c.checkDataFileHost(r.e, cstart, l2off, i); err != nil {
			return segment{}, err
		}
		alloc, zero := uint32(r.bm), uint32(r.bm>>32)
		sc := uint((off - cstart) >> c.subBits)
		var mask uint32
		kind := KindHole
		switch {
		case zero>>sc&1 != 0:
			mask, kind = zero, KindZero
		case alloc>>sc&1 != 0:
			mask, kind = alloc, KindData
		default:
			mask = ^(alloc | zero)
		}
		n := uint(bits.TrailingZeros32(^(mask >> sc)))
		end := cstart + int64(sc+n)<<c.subBits
		switch kind {
		case KindZero:
			return segment{kind: KindZero, length: end - off, host: -1}, nil
		case KindData:
			return c.dataSeg(off, host+(off-cstart), end-off)
		}
		return c.hole(off, end)
	}
	return segment{}, c.invalidEntry(r, l2off, i)
}

// extendRun returns where a run of holes or zeros that reaches the start of L1 entry i ends:
// it goes on through entries that need no table (holes) and tables known to be uniformly
// of the same kind.
func (c *qcow2Core) extendRun(l1 *qcow2L1, i int64, kind uint8) int64 {
	n := int64(len(l1.ent))
	q := &c.l2c
	q.mu.Lock()
	defer q.mu.Unlock()
	for i < n {
		if !l1.needed(i) {
			if kind != qcHole {
				break
			}
			i = l1.nextNonZero(i)
			continue
		}
		if k, ok := q.uniform[int64(l1.ent[i]&qcow2L1OffsetMask)]; !ok || k != kind {
			break
		}
		i++
	}
	if i >= n && kind == qcHole {
		return c.virtual
	}
	return min(c.virtual, i<<(c.cb+c.l2Bits))
}

// checkDataFileHost enforces that clusters of an external data file sit at their guest
// offset, as qemu does.
func (c *qcow2Core) checkDataFileHost(e uint64, guest, l2off int64, i int) error {
	if !c.hasDataFile {
		return nil
	}
	host := int64(e & qcow2L2OffsetMask)
	if host == 0 && e&qcow2Copied == 0 {
		return nil // zero cluster without a host offset
	}
	if host != guest {
		return ferr(QCOW2, "L2 table", "", l2off+int64(i)*c.l2EntrySize(), host, "external data file cluster does not sit at its guest offset %d", guest)
	}
	return nil
}

func (c *qcow2Core) l2EntrySize() int64 {
	if c.extL2 {
		return 16
	}
	return 8
}

func (c *qcow2Core) invalidEntry(r qcow2L2Ref, l2off int64, i int) error {
	at := l2off + int64(i)*c.l2EntrySize()
	off := r.e & qcow2L2OffsetMask
	if off&uint64(c.cs-1) != 0 {
		return ferr(QCOW2, "L2 table", "", at, off, "cluster offset is not aligned to a cluster (L2 index %d)", i)
	}
	return ferr(QCOW2, "L2 table", "subcluster bitmap", at+8, fmt.Sprintf("%#x", r.bm), "invalid subcluster allocation bitmap (L2 index %d)", i)
}

func (c *qcow2Core) dataSeg(off, host, n int64) (segment, error) {
	if c.cryptErr != nil {
		return segment{}, c.cryptErr
	}
	if c.dataErr != nil {
		return segment{}, c.dataErr
	}
	return segment{kind: KindData, length: n, r: c.data, off: host, host: host}, nil
}

func (c *qcow2Core) compressedSeg(off, end int64) (segment, error) {
	switch {
	case c.cryptErr != nil:
		return segment{}, c.cryptErr
	case c.compErr != nil:
		return segment{}, c.compErr
	case c.hasDataFile:
		return segment{}, ferr(QCOW2, "L2 table", "", -1, nil, "compressed cluster at guest offset %d in an image with an external data file", off)
	}
	return segment{kind: KindCompressed, length: end - off, r: &c.comp, off: off, host: -1}, nil
}

// hole is an unallocated run [off, end): it reads from the backing file where there is
// one, and as zeros past the backing file's end or where there is none.
func (c *qcow2Core) hole(off, end int64) (segment, error) {
	end = min(end, c.virtual)
	if !c.hasBacking {
		return segment{kind: KindHole, length: end - off, host: -1}, nil
	}
	if c.backing == nil {
		return segment{}, c.backingErr
	}
	bsize := c.backing.Size()
	if off >= bsize {
		return segment{kind: KindHole, length: end - off, host: -1}, nil
	}
	s, err := c.backing.lookup(off)
	if err != nil {
		return segment{}, err
	}
	s.length = min(s.length, min(end, bsize)-off)
	s.depth++
	return s, nil
}

// setupReads prepares the caches and opens the other files reads need (only what the
// opener allows: it refuses without AllowBacking, outside Dir, too deep, or in a loop).
func (c *qcow2Core) setupReads(o *opener) {
	c.data = c.r
	c.comp.c = c
	c.l2c.init(c)
	c.zc.init(c)
	if c.readErr != nil {
		return
	}
	if c.hasDataFile {
		if c.dataFileName == "" {
			c.dataErr = unsupported(QCOW2, "the image keeps its data in an external data file it does not name")
		} else if f, _, err := o.openRelated(c.dataFileName, "data file"); err != nil {
			c.dataErr = err
		} else {
			c.data = f
		}
	}
	if c.h.backingOff != 0 && c.backingName != "" {
		c.hasBacking = true
		var declared Format
		if c.backingFormat != "" {
			f, err := ParseFormat(c.backingFormat)
			if err != nil {
				c.backingErr = unsupported(QCOW2, "backing file format %q", c.backingFormat)
				return
			}
			declared = f
		}
		d, err := o.openRelatedImage(c.backingName, declared, "backing file")
		if err != nil {
			c.backingErr = err
		} else {
			c.backing = d
		}
	}
}

// qcow2CompReader gives the guest bytes of compressed clusters: ReadAt takes guest offsets.
type qcow2CompReader struct{ c *qcow2Core }

func (z *qcow2CompReader) ReadAt(p []byte, off int64) (int, error) {
	c := z.c
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		desc, err := c.compressedEntry(pos)
		if err != nil {
			return n, err
		}
		m, err := c.zc.read(c, desc, p[n:], int(pos&(c.cs-1)))
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// compressedEntry returns the descriptor of the compressed cluster that holds guest offset
// off (the L2 table is cached by the lookup that returned the segment).
func (c *qcow2Core) compressedEntry(off int64) (uint64, error) {
	l1, err := c.loadL1()
	if err != nil {
		return 0, err
	}
	cl := off >> c.cb
	l1i := cl >> c.l2Bits
	if l1i >= int64(len(l1.ent)) {
		return 0, fmt.Errorf("qcow2: guest offset %d is not in a compressed cluster", off)
	}
	l2off := int64(l1.ent[l1i] & qcow2L1OffsetMask)
	r, err := c.l2c.entry(c, l2off, int(cl&(int64(1)<<c.l2Bits-1)))
	if err != nil {
		return 0, err
	}
	if r.cls != qcCompressed {
		return 0, fmt.Errorf("qcow2: guest offset %d is not in a compressed cluster", off)
	}
	return r.e & (qcow2CompressedBit - 1), nil
}

// qcow2ZCache keeps the last decompressed clusters, keyed by their descriptor.
type qcow2ZCache struct {
	mu    sync.Mutex
	slots []qcow2ZSlot
	tick  uint64
	bufs  sync.Pool // *[]byte of one cluster
	ins   sync.Pool // *[]byte of two clusters (the largest compressed size)
	dec   sync.Pool // *qcow2Decoder
}

type qcow2ZSlot struct {
	key  uint64
	buf  *[]byte
	used uint64
}

type qcow2Decoder struct {
	br   bytes.Reader
	fl   io.ReadCloser
	zstd *zstd.Decoder
}

func (z *qcow2ZCache) init(c *qcow2Core) {
	n := int(min(32, max(4, qcow2ZCacheBytes/c.cs)))
	z.slots = make([]qcow2ZSlot, n)
}

// read copies the decompressed cluster desc, from byte from on, into p.
func (z *qcow2ZCache) read(c *qcow2Core, desc uint64, p []byte, from int) (int, error) {
	z.mu.Lock()
	z.tick++
	for i := range z.slots {
		s := &z.slots[i]
		if s.buf != nil && s.key == desc {
			s.used = z.tick
			n := copy(p, (*s.buf)[from:])
			z.mu.Unlock()
			return n, nil
		}
	}
	z.mu.Unlock()

	if from == 0 && int64(len(p)) >= c.cs {
		// The caller wants the whole cluster (a converter does): decode straight into p.
		if err := c.decompress(desc, p[:c.cs]); err != nil {
			return 0, err
		}
		return int(c.cs), nil
	}
	buf, _ := z.bufs.Get().(*[]byte)
	if buf == nil || int64(len(*buf)) != c.cs {
		b := make([]byte, c.cs)
		buf = &b
	}
	if err := c.decompress(desc, *buf); err != nil {
		z.bufs.Put(buf)
		return 0, err
	}
	z.mu.Lock()
	victim := &z.slots[0]
	for i := range z.slots {
		if z.slots[i].used < victim.used {
			victim = &z.slots[i]
		}
	}
	if victim.buf != nil {
		z.bufs.Put(victim.buf)
	}
	z.tick++
	*victim = qcow2ZSlot{key: desc, buf: buf, used: z.tick}
	n := copy(p, (*buf)[from:])
	z.mu.Unlock()
	return n, nil
}

// decompress decodes the compressed cluster desc into out (one cluster). The descriptor is
// decoded as the spec says: x = 62 - (cluster_bits - 8); bits 0..x-1 are the host offset,
// bits x..61 the number of additional 512-byte sectors. Like qemu, the data must decode to
// a whole cluster; what follows it in the last sector is ignored.
func (c *qcow2Core) decompress(desc uint64, out []byte) error {
	coff := desc & c.coffMask
	nsec := (desc>>c.csizeShift)&c.csizeMask + 1
	csize := int64(nsec*512 - coff&511) // at most two clusters
	z := &c.zc
	in, _ := z.ins.Get().(*[]byte)
	if in == nil || int64(len(*in)) < 2*c.cs {
		b := make([]byte, 2*c.cs)
		in = &b
	}
	defer z.ins.Put(in)
	src := (*in)[:csize]
	if err := c.readFull(src, int64(coff)); err != nil {
		return fmt.Errorf("reading the qcow2 compressed cluster at %d: %w", coff, err)
	}
	d, _ := z.dec.Get().(*qcow2Decoder)
	if d == nil {
		d = &qcow2Decoder{}
	}
	defer z.dec.Put(d)
	d.br.Reset(src)
	var r io.Reader
	switch c.compression {
	case 0: // raw deflate; klauspost's inflater is about twice as fast as compress/flate
		if d.fl == nil {
			d.fl = flate.NewReader(&d.br)
		} else if err := d.fl.(flate.Resetter).Reset(&d.br, nil); err != nil {
			return err
		}
		r = d.fl
	case 1:
		if d.zstd == nil {
			zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(max(uint64(c.cs), 8<<20)), zstd.WithDecoderLowmem(true))
			if err != nil {
				return err
			}
			d.zstd = zd
		}
		if err := d.zstd.Reset(&d.br); err != nil {
			return err
		}
		r = d.zstd
	default:
		return c.compErr
	}
	if n, err := io.ReadFull(r, out); err != nil {
		return ferr(QCOW2, "compressed cluster", "", int64(coff), nil, "%s data decodes to %d of %d bytes: %v", c.info.CompressionType, n, len(out), err)
	}
	return nil
}
