package inspect

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Check for qcow2 rebuilds the refcount of every cluster from the metadata (header, active
// and snapshot L1 tables, their L2 tables and data clusters, the snapshot table, the
// refcount table and blocks, the encryption header, bitmaps) and compares it with the
// refcount blocks, as qemu's qcow2_check_refcounts does: a cluster whose stored refcount is
// higher than its references is a leak, one whose stored refcount is lower is a corruption,
// and the same entry checks (reserved bits, alignment, references one cluster or more past
// the end of the file, OFLAG_COPIED) count as qemu counts them.
//
// The work is bounded by the file: the computed refcounts cover the file's clusters (plus
// at most one), tables are read only where they lie inside the file, every distinct L2
// table is read once however many L1 entries point at it, and all the metadata read (L1,
// L2, refcount and bitmap tables and blocks) adds up to at most four times the file's size:
// past that, a hostile file is reported as a check error and the check stops.

// Roles a cluster plays, to explain overlaps.
const (
	qcRoleHeader uint8 = 1 << iota
	qcRoleL1
	qcRoleL2
	qcRoleData
	qcRoleRefTable
	qcRoleRefBlock
	qcRoleSnapTable
	qcRoleOther
)

var qcRoleNames = []string{"header", "L1 table", "L2 table", "data", "refcount table", "refcount block", "snapshot table", "encryption header or bitmap"}

type qcow2Checker struct {
	c       *qcow2Core
	r       *Report
	fileLen int64
	ref     []uint32 // computed refcounts
	role    []uint8
	refMax  uint64

	budget int64 // metadata bytes the check may still read

	reft    []uint64 // refcount table entries inside the file
	rbBits  uint     // log2 of the entries in a refcount block
	rbOff   [8]int64
	rbData  [8][]byte
	rbNext  int
	refs    []uint64 // L2 table references: offset | 1 (active) | 2 (COPIED set)
	buf     []byte
	stopped bool
}

func (c *qcow2Core) check(r *Report) {
	if c.readErr != nil {
		r.Add(CheckError, "header", 72, "unknown incompatible features %#x: the layout cannot be checked", c.h.incompat&^qcow2IncompatKnown)
		return
	}
	if !c.sizeKnown {
		r.Add(CheckError, "file", -1, "the file size is not known yet")
		return
	}
	k := &qcow2Checker{c: c, r: r, fileLen: c.fileSize}
	k.run()
}

// add records a problem counted n times (one entry in the list).
func (k *qcow2Checker) add(kind ProblemKind, n uint64, structure string, off int64, format string, args ...any) {
	if n == 0 {
		return
	}
	k.r.Add(kind, structure, off, format, args...) // formats only while the list has room
	extra := int(min(n-1, math.MaxInt32))
	switch kind {
	case Corruption:
		k.r.Corruptions += extra
	case Leak:
		k.r.Leaks += extra
	default:
		k.r.CheckErrors += extra
	}
}

func (k *qcow2Checker) run() {
	c := k.c
	cs := c.cs
	nb := (k.fileLen + cs - 1) >> c.cb
	if nb > math.MaxInt32 {
		k.add(CheckError, 1, "file", -1, "the file has %d clusters, more than qemu checks", nb)
		return
	}
	k.ref = make([]uint32, nb, nb+1)
	k.role = make([]uint8, nb, nb+1)
	k.refMax = min(uint64(math.MaxUint32), math.MaxUint64>>(64-(uint(1)<<c.h.refcountOrder)))
	k.budget = 4*k.fileLen + 4*cs + 1<<20
	k.rbBits = c.cb + 3 - uint(c.h.refcountOrder)
	k.buf = make([]byte, cs)
	k.r.TotalClusters = (c.virtual + cs - 1) >> c.cb

	// The snapshot table, as qemu's qcow2_check_read_snapshot_table sees it.
	snaps := c.snaps
	snapOff, snapSize := int64(c.h.snapshotsOff), c.snapsSize
	if c.h.nbSnapshots > 0 && !c.snapsRead {
		k.add(CheckError, 1, "snapshot table", snapOff, "cannot read the snapshot table: %s", c.snapErr)
		snaps, snapOff, snapSize = nil, 0, 0
	}
	if c.h.version >= 3 {
		for i, s := range snaps {
			if s.extraSize < 16 {
				k.add(Corruption, 1, "snapshot table", snapOff, "snapshot table entry %d is incomplete (%d bytes of extra data, version 3 needs 16)", i, s.extraSize)
			}
		}
	}

	k.inc(0, uint64(cs), 1, qcRoleHeader, "header", 0)
	k.scanL1(c.h.l1Off, c.h.l1Size, true, "active L1 table")
	if c.hasDataFile && len(snaps) > 0 {
		k.add(Corruption, 1, "snapshot table", snapOff, "%d snapshots in an image with an external data file", len(snaps))
	}
	for _, s := range snaps {
		what := fmt.Sprintf("L1 table of snapshot %s (%q)", s.ID, s.Name)
		if s.L1TableOffset&uint64(cs-1) != 0 {
			k.add(Corruption, 1, "snapshot table", snapOff, "%s at offset %#x is not aligned to a cluster", what, s.L1TableOffset)
			continue
		}
		if uint64(s.L1Size) > qcow2MaxL1Bytes/8 {
			k.add(Corruption, 1, "snapshot table", snapOff, "%s has %d entries, more than qemu's limit", what, s.L1Size)
			continue
		}
		k.scanL1(s.L1TableOffset, s.L1Size, false, what)
	}
	k.loadRefTable()
	k.processL2Refs()
	k.inc(uint64(snapOff), uint64(snapSize), 1, qcRoleSnapTable, "snapshot table", snapOff)
	k.inc(c.h.refTableOff, uint64(c.h.refTableClusters)<<c.cb, 1, qcRoleRefTable, "refcount table", int64(c.h.refTableOff))
	if c.hasCryptoExt && c.cryptoLen > 0 {
		k.inc(c.cryptoOff, c.cryptoLen, 1, qcRoleOther, "encryption header", int64(c.cryptoOff))
	}
	k.checkBitmaps()
	k.checkRefBlocks()
	k.compare()
}

// inc counts n references to the clusters of [off, off+size), as qemu's
// qcow2_inc_refcounts_imrt: a range that ends a cluster or more past the end of the file
// is a corruption and counts nothing.
func (k *qcow2Checker) inc(off, size, n uint64, role uint8, what string, at int64) {
	if size == 0 || n == 0 {
		return
	}
	cs := uint64(k.c.cs)
	if off > math.MaxInt64-size || int64(off+size)-k.fileLen >= int64(cs) {
		k.add(Corruption, n, what, at, "%s at offset %d (%d bytes) lies past the end of the file (%d bytes)", what, off, size, k.fileLen)
		return
	}
	last := (off + size - 1) >> k.c.cb
	for cl := off >> k.c.cb; cl <= last; cl++ {
		for cl >= uint64(len(k.ref)) { // at most one cluster past the end of the file
			k.ref = append(k.ref, 0)
			k.role = append(k.role, 0)
		}
		v := uint64(k.ref[cl]) + n
		if v > k.refMax {
			k.add(Corruption, v-k.refMax, what, at, "refcount overflow for the cluster at offset %d (refcounts are %d bits wide)", cl<<k.c.cb, 1<<k.c.h.refcountOrder)
			v = k.refMax
		}
		k.ref[cl] = uint32(v)
		k.role[cl] |= role
	}
}

// spend takes n bytes from the read budget; when it runs out the check stops.
func (k *qcow2Checker) spend(n int64, what string, off int64) bool {
	if k.stopped {
		return false
	}
	if k.budget -= n; k.budget < 0 {
		k.stopped = true
		k.add(CheckError, 1, what, off, "the metadata references more than four times what the file holds; the check stopped here")
		return false
	}
	return true
}

// read fills p from the file; bytes past its end read as zeros.
func (k *qcow2Checker) read(p []byte, off int64, what string) bool {
	if err := k.c.readFull(p, off); err != nil {
		k.add(CheckError, 1, what, off, "I/O error reading %s: %v", what, err)
		return false
	}
	return true
}

// scanL1 counts an L1 table and its L2 tables, checks its entries, and remembers the L2
// tables it points at for processL2Refs.
func (k *qcow2Checker) scanL1(off uint64, size uint32, active bool, what string) {
	c := k.c
	if size == 0 || k.stopped {
		return
	}
	k.inc(off, uint64(size)*8, 1, qcRoleL1, what, int64(min(off, math.MaxInt64)))
	n := int64(size)
	if off > math.MaxInt64-uint64(n)*8 {
		return
	}
	n = max(0, min(n, (k.fileLen-int64(off))/8)) // entries past the end of the file are zeros
	if !k.spend(n*8, what, int64(off)) {
		return
	}
	for i := int64(0); i < n; {
		chunk := min(n-i, int64(len(k.buf))/8)
		at := int64(off) + i*8
		if !k.read(k.buf[:chunk*8], at, what) {
			return
		}
		for j := int64(0); j < chunk; j++ {
			e := binary.BigEndian.Uint64(k.buf[j*8:])
			if e == 0 {
				continue
			}
			eoff := at + j*8
			if e&qcow2L1ReservedMask != 0 {
				k.add(Corruption, 1, what, eoff, "L1 entry %d has reserved bits set: %#x", i+j, e)
			}
			l2 := e & qcow2L1OffsetMask
			k.inc(l2, uint64(c.cs), 1, qcRoleL2, "L2 table", eoff)
			if l2&uint64(c.cs-1) != 0 {
				k.add(Corruption, 1, what, eoff, "L1 entry %d: L2 table offset %#x is not aligned to a cluster", i+j, l2)
			}
			ref := l2
			if active {
				ref |= 1
				if e&qcow2Copied != 0 {
					ref |= 2
				}
			}
			k.refs = append(k.refs, ref)
		}
		i += chunk
	}
}

// loadRefTable reads the refcount table entries that lie inside the file.
func (k *qcow2Checker) loadRefTable() {
	c := k.c
	off := int64(c.h.refTableOff)
	n := int64(c.h.refTableClusters) << (c.cb - 3)
	n = max(0, min(n, (k.fileLen-off)/8))
	if !k.spend(n*8, "refcount table", off) {
		return
	}
	b := make([]byte, n*8) // at most 8 MiB (checked at open) and inside the file
	if !k.read(b, off, "refcount table") {
		return
	}
	k.reft = make([]uint64, n)
	for i := range k.reft {
		k.reft[i] = binary.BigEndian.Uint64(b[i*8:])
	}
}

// ondisk returns the refcount the refcount blocks record for a cluster; ok is false when
// the refcount block is unreadable (not aligned), as qemu's qcow2_get_refcount fails.
func (k *qcow2Checker) ondisk(cluster uint64) (uint64, bool) {
	c := k.c
	ti := cluster >> k.rbBits
	if ti >= uint64(len(k.reft)) {
		return 0, true
	}
	rb := int64(k.reft[ti] & qcow2RefOffsetMask)
	if rb == 0 {
		return 0, true
	}
	if rb&(c.cs-1) != 0 {
		return 0, false
	}
	var data []byte
	for i, o := range k.rbOff {
		if o == rb && k.rbData[i] != nil {
			data = k.rbData[i]
			break
		}
	}
	if data == nil {
		if !k.spend(c.cs, "refcount block", rb) {
			return 0, false
		}
		i := k.rbNext
		k.rbNext = (k.rbNext + 1) % len(k.rbOff)
		if k.rbData[i] == nil {
			k.rbData[i] = make([]byte, c.cs)
		}
		if err := c.readFull(k.rbData[i], rb); err != nil {
			k.rbData[i] = nil
			return 0, false
		}
		k.rbOff[i] = rb
		data = k.rbData[i]
	}
	idx := cluster & (uint64(1)<<k.rbBits - 1)
	switch order := c.h.refcountOrder; order {
	case 0, 1, 2:
		w := uint64(1) << order
		bit := idx * w
		return uint64(data[bit/8]>>(bit%8)) & (1<<w - 1), true
	case 3:
		return uint64(data[idx]), true
	case 4:
		return uint64(binary.BigEndian.Uint16(data[idx*2:])), true
	case 5:
		return uint64(binary.BigEndian.Uint32(data[idx*4:])), true
	default:
		return binary.BigEndian.Uint64(data[idx*8:]), true
	}
}

// processL2Refs reads every distinct L2 table once and applies it as many times as L1
// entries point at it (active ones also count the allocation statistics and OFLAG_COPIED).
func (k *qcow2Checker) processL2Refs() {
	slices.Sort(k.refs)
	for i := 0; i < len(k.refs); {
		off := k.refs[i] &^ 3
		j := i
		var all, active, mismatch uint64
		for ; j < len(k.refs) && k.refs[j]&^3 == off; j++ {
			all++
			r := k.refs[j]
			if r&1 == 0 || off == 0 {
				continue
			}
			// OFLAG_COPIED of the L1 entry: set exactly when the L2 table's refcount is one.
			rc, ok := k.ondisk(off >> k.c.cb)
			if !ok {
				continue // qemu skips the entry silently: compare reports the refcount block
			}
			active++
			if (rc == 1) != (r&2 != 0) {
				mismatch++
			}
		}
		if mismatch > 0 {
			k.add(Corruption, mismatch, "active L1 table", -1, "OFLAG_COPIED of the L1 entry for the L2 table at %#x disagrees with its refcount", off)
		}
		var frag uint64
		for ; i < j; i++ {
			if k.refs[i]&1 != 0 {
				frag++
			}
		}
		k.processL2(off, all, frag, active)
		if k.stopped {
			return
		}
	}
}

// processL2 checks one L2 table referenced n times, nFrag of them from the active L1 table
// (allocation statistics) and nCopied of those with a readable refcount (OFLAG_COPIED).
func (k *qcow2Checker) processL2(off, n, nFrag, nCopied uint64) {
	c := k.c
	if int64(off) >= k.fileLen {
		return // all zeros: unallocated; inc has reported it
	}
	if !k.spend(c.cs, "L2 table", int64(off)) {
		return
	}
	if !k.read(k.buf, int64(off), "L2 table") {
		return
	}
	es := int(c.l2EntrySize())
	entries := len(k.buf) / es
	var next uint64
	for i := 0; i < entries; i++ {
		e := binary.BigEndian.Uint64(k.buf[i*es:])
		var bm uint64
		if c.extL2 {
			bm = binary.BigEndian.Uint64(k.buf[i*es+8:])
		}
		at := int64(off) + int64(i*es)
		hoff := e & qcow2L2OffsetMask
		compressed := e&qcow2CompressedBit != 0
		if !compressed && e&qcow2L2StdReserved != 0 {
			k.add(Corruption, n, "L2 table", at, "L2 entry %d has reserved bits set: %#x", i, e)
		}
		switch {
		case compressed:
			if e&qcow2Copied != 0 {
				k.add(Corruption, n, "L2 table", at, "L2 entry %d: the copied flag is set on a compressed cluster", i)
				e &^= qcow2Copied
			}
			if c.hasDataFile {
				k.add(Corruption, n, "L2 table", at, "L2 entry %d: compressed cluster in an image with an external data file", i)
				continue
			}
			if bm != 0 {
				k.add(Corruption, n, "L2 table", at, "L2 entry %d: compressed cluster with a subcluster bitmap %#x", i, bm)
				continue
			}
			coff := e & c.coffMask
			nsec := (e>>c.csizeShift)&c.csizeMask + 1
			k.inc(coff, nsec*512-coff&511, n, qcRoleData, "compressed cluster", at)
			k.r.AllocatedClusters += int64(nFrag)
			k.r.CompressedClusters += int64(nFrag)
			k.r.FragmentedClusters += int64(nFrag)
		case !c.extL2 && e&qcow2ZeroBit != 0 && hoff == 0:
			// a zero cluster without a host cluster
		case hoff != 0 || (c.hasDataFile && e&qcow2Copied != 0):
			if (bm>>32)&bm != 0 {
				k.add(Corruption, n, "L2 table", at, "L2 entry %d: allocated cluster with a corrupted subcluster bitmap %#x", i, bm)
			}
			if hoff&uint64(c.cs-1) != 0 {
				what := "data"
				if (c.extL2 && uint32(bm) == 0) || (!c.extL2 && e&qcow2ZeroBit != 0) {
					what = "preallocated"
				}
				k.add(Corruption, n, "L2 table", at, "L2 entry %d: %s cluster offset %#x is not aligned to a cluster", i, what, hoff)
			}
			if nFrag > 0 {
				k.r.AllocatedClusters += int64(nFrag)
				if next != 0 && hoff != next {
					k.r.FragmentedClusters += int64(nFrag)
				}
				next = hoff + uint64(c.cs)
			}
			if !c.hasDataFile {
				k.inc(hoff, uint64(c.cs), n, qcRoleData, "data cluster", at)
			}
			if nCopied > 0 {
				rc, ok := uint64(1), true
				if !c.hasDataFile {
					rc, ok = k.ondisk(hoff >> c.cb)
				}
				if ok && (rc == 1) != (e&qcow2Copied != 0) {
					k.add(Corruption, nCopied, "L2 table", at, "L2 entry %d: OFLAG_COPIED disagrees with the data cluster's refcount %d", i, rc)
				}
			}
		default: // unallocated
			if uint32(bm) != 0 {
				k.add(Corruption, n, "L2 table", at, "L2 entry %d: unallocated cluster with a subcluster allocation bitmap %#x", i, bm)
			}
		}
	}
}

// checkBitmaps counts the bitmap directory, the bitmap tables and their clusters
// (qemu's qcow2_check_bitmaps_refcounts).
func (k *qcow2Checker) checkBitmaps() {
	c := k.c
	if !c.bitmapsOK {
		return
	}
	k.inc(c.bitmapDirOff, c.bitmapDirSize, 1, qcRoleOther, "bitmap directory", int64(c.bitmapDirOff))
	if !within(int64(c.bitmapDirOff), int64(c.bitmapDirSize), k.fileLen) {
		k.add(Corruption, 1, "bitmap directory", int64(c.bitmapDirOff), "the bitmap directory lies past the end of the file")
		return
	}
	dir, ok, err := c.parseBitmapDir()
	if err != nil {
		k.add(CheckError, 1, "bitmap directory", int64(c.bitmapDirOff), "I/O error: %v", err)
		return
	}
	if !ok {
		k.add(Corruption, 1, "bitmap directory", int64(c.bitmapDirOff), "the bitmap directory cannot be parsed")
		return
	}
	for _, b := range dir {
		if k.stopped {
			return
		}
		k.inc(b.tableOff, uint64(b.tableSize)*8, 1, qcRoleOther, "bitmap table", int64(min(b.tableOff, math.MaxInt64)))
		if b.tableOff&uint64(c.cs-1) != 0 || b.tableOff > math.MaxInt64 || !within(int64(b.tableOff), int64(b.tableSize)*8, k.fileLen) {
			k.add(Corruption, 1, "bitmap table", int64(min(b.tableOff, math.MaxInt64)), "bitmap %q: table at %#x (%d entries) cannot be read", b.name, b.tableOff, b.tableSize)
			continue
		}
		if !k.spend(int64(b.tableSize)*8, "bitmap table", int64(b.tableOff)) {
			return
		}
		r := qcow2SeqReader{c: c, off: int64(b.tableOff), buffered: true}
		var eb [8]byte
		for i := uint32(0); i < b.tableSize; i++ {
			if err := r.read(eb[:]); err != nil {
				k.add(CheckError, 1, "bitmap table", r.off, "I/O error: %v", err)
				break
			}
			e := binary.BigEndian.Uint64(eb[:])
			boff := e & 0x00fffffffffffe00
			if e&0xff000000000001fe != 0 || (boff != 0 && (boff&uint64(c.cs-1) != 0 || e&1 != 0)) {
				k.add(Corruption, 1, "bitmap table", r.off-8, "bitmap %q: invalid table entry %d: %#x", b.name, i, e)
				continue
			}
			if boff != 0 {
				k.inc(boff, uint64(c.cs), 1, qcRoleOther, "bitmap data", r.off-8)
			}
		}
	}
}

// checkRefBlocks is qemu's check_refblocks: every refcount block is aligned, inside the
// file, and referenced exactly once.
func (k *qcow2Checker) checkRefBlocks() {
	c := k.c
	for i, e := range k.reft {
		if k.stopped {
			return
		}
		at := int64(c.h.refTableOff) + int64(i)*8
		off := e & qcow2RefOffsetMask
		if e&qcow2RefReserved != 0 {
			k.add(Corruption, 1, "refcount table", at, "refcount table entry %d has reserved bits set: %#x", i, e)
			continue
		}
		if off&uint64(c.cs-1) != 0 {
			k.add(Corruption, 1, "refcount table", at, "refcount block %d at %#x is not aligned to a cluster", i, off)
			continue
		}
		cl := off >> c.cb
		if cl >= uint64(len(k.ref)) {
			k.add(Corruption, 1, "refcount table", at, "refcount block %d at %#x lies past the end of the file", i, off)
			continue
		}
		if off != 0 {
			k.inc(off, uint64(c.cs), 1, qcRoleRefBlock, "refcount block", at)
			if k.ref[cl] != 1 {
				k.add(Corruption, 1, "refcount table", at, "refcount block %d at %#x is referenced %d times%s", i, off, k.ref[cl], k.overlap(cl))
			}
		}
	}
}

func (k *qcow2Checker) overlap(cl uint64) string {
	r := k.role[cl]
	if r&(r-1) == 0 {
		return ""
	}
	var names []string
	for b := 0; b < len(qcRoleNames); b++ {
		if r&(1<<b) != 0 {
			names = append(names, qcRoleNames[b])
		}
	}
	return " (overlapping metadata: used as " + strings.Join(names, " and ") + ")"
}

// compare sets the stored refcounts against the computed ones.
func (k *qcow2Checker) compare() {
	c := k.c
	highest := uint64(0)
	for i := range k.ref {
		cl := uint64(i)
		r1, ok := k.ondisk(cl)
		if k.stopped {
			return
		}
		if !ok {
			ti := cl >> k.rbBits
			k.add(CheckError, 1, "refcount block", int64(c.h.refTableOff)+int64(ti)*8, "cannot get the refcount of cluster %d: refcount block %d is not aligned", cl, ti)
			continue
		}
		r2 := uint64(k.ref[i])
		if r1 > 0 || r2 > 0 {
			highest = cl
		}
		switch {
		case r1 < r2:
			k.add(Corruption, 1, "refcount block", int64(cl<<c.cb), "cluster %d refcount=%d reference=%d%s", cl, r1, r2, k.overlap(cl))
		case r1 > r2:
			k.add(Leak, 1, "refcount block", int64(cl<<c.cb), "leaked cluster %d refcount=%d reference=%d", cl, r1, r2)
		}
	}
	k.r.ImageEndOffset = int64(highest+1) << c.cb
}
