package convert

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"glimpse/internal/writeback"
)

// q2Space hands out the host space of a qcow2 image being written front to back. Every
// allocation is appended at the end of what is allocated so far (end): whole clusters for
// guest data, L2 tables, the L1 table and refcount structures, and byte ranges for
// compressed clusters, which are packed one after the other as qemu packs them (a
// compressed cluster may run into the next host cluster). Nothing is ever freed or
// rewritten, so a host cluster's refcount is final as soon as end has passed it.
//
// That keeps the refcounts bounded in memory: only the refcount blocks that still cover
// clusters at or after end are held (normally one). A block whose clusters are all behind
// end is appended to the file right away, where it lands in a later block's range, so that
// the refcount structures describe themselves without any second pass. The refcount table
// (one 8-byte offset per block) stays in memory until finish writes it at the end.
//
// Writes go through a small buffer that is flushed in large pwrites; large pieces (guest
// data) are written directly. Padding between an allocation and the next cluster boundary
// is zeros (or a hole where the buffer is empty).
type q2Space struct {
	out  *q2File
	cs   int64 // cluster size
	bits uint  // cluster_bits

	rbits  uint   // refcount width
	rmax   uint64 // largest refcount an entry holds
	perBlk int64  // refcount entries per block

	end int64 // first free byte of the file

	bufOff int64  // file offset of buf[0]
	buf    []byte // bytes waiting for one pwrite

	rcBase  int64    // index of the first refcount block not written yet
	pending [][]byte // blocks rcBase, rcBase+1, …: entries packed as on disk
	spare   [][]byte // written blocks, for reuse
	rtable  []uint64 // file offsets of the written blocks, by block index

	compressLimit int64 // compressed data must end below this offset (the descriptor's width)

	reserved   int64 // the file is preallocated up to here
	noPrealloc bool
}

// q2MaxRefTable is qemu's limit on the refcount table (QCOW_MAX_REFTABLE_SIZE): images
// whose table would be larger cannot be opened by qemu.
const q2MaxRefTable = 8 << 20

// q2BufSize is the append buffer: compressed clusters, L2 tables and refcount blocks are
// gathered into writes of this size.
const q2BufSize = 1 << 20

func newQ2Space(out *q2File, clusterBits, refcountOrder uint) *q2Space {
	s := &q2Space{
		out:    out,
		cs:     1 << clusterBits,
		bits:   clusterBits,
		rbits:  1 << refcountOrder,
		buf:    make([]byte, 0, q2BufSize),
		perBlk: (int64(1) << clusterBits) * 8 >> refcountOrder,
	}
	if s.rbits == 64 {
		s.rmax = 1<<63 - 1 // qemu's refcount_max for 64-bit entries
	} else {
		s.rmax = 1<<s.rbits - 1
	}
	s.compressLimit = int64(1) << (70 - clusterBits) // 62 - (cluster_bits - 8) offset bits
	return s
}

// reserveHeader allocates cluster 0 for the header, which is written last.
func (s *q2Space) reserveHeader() error {
	s.end = s.cs
	return s.ref(0, s.cs)
}

// clusters appends p in fresh clusters (the last one may be partly filled: the rest reads
// as zeros) and returns the offset of the first.
func (s *q2Space) clusters(p []byte) (int64, error) {
	off, err := s.place(p)
	if err != nil {
		return 0, err
	}
	return off, s.settle()
}

// place is clusters without settle.
func (s *q2Space) place(p []byte) (int64, error) {
	off := alignUp(s.end, s.cs)
	n := alignUp(int64(len(p)), s.cs)
	if err := s.write(off, p); err != nil {
		return 0, err
	}
	s.end = off + n
	return off, s.ref(off, n)
}

// reserve allocates a fresh cluster whose data the caller writes later, piece by piece
// and in order, before anything else is appended (it does not settle).
func (s *q2Space) reserve() (int64, error) { return s.reserveN(1) }

// reserveN is reserve for n contiguous clusters.
func (s *q2Space) reserveN(n int64) (int64, error) {
	off := alignUp(s.end, s.cs)
	s.end = off + n*s.cs
	return off, s.ref(off, n*s.cs)
}

// compressed appends the compressed data of one cluster right after the previous
// allocation, as qemu's qcow2_alloc_bytes does: in the same host cluster as far as it
// goes and on into the next one, unless that cluster's refcount is already at its
// maximum (narrow refcounts), in which case it starts a fresh cluster.
func (s *q2Space) compressed(p []byte) (int64, error) {
	off := s.end
	if off%s.cs != 0 {
		v, err := s.get(off / s.cs)
		if err != nil {
			return 0, err
		}
		if v >= s.rmax {
			off = alignUp(off, s.cs)
		}
	}
	if off+int64(len(p)) > s.compressLimit {
		return 0, fmt.Errorf("%s: compressed data past offset %d, the most a %d-byte cluster's descriptor can address", s.out.name, s.compressLimit, s.cs)
	}
	if err := s.write(off, p); err != nil {
		return 0, err
	}
	s.end = off + int64(len(p))
	if err := s.ref(off, int64(len(p))); err != nil {
		return 0, err
	}
	return off, s.settle()
}

// write puts p at off, which is at or after everything written so far.
func (s *q2Space) write(off int64, p []byte) error {
	tail := s.bufOff + int64(len(s.buf))
	if off < tail {
		return fmt.Errorf("%s: internal error: write at %d behind the end of the output (%d)", s.out.name, off, tail)
	}
	if gap := off - tail; gap > 0 {
		if len(s.buf) > 0 && gap <= int64(cap(s.buf)-len(s.buf)) {
			s.buf = append(s.buf, zeros[:gap]...)
		} else {
			if err := s.flush(); err != nil {
				return err
			}
			s.bufOff = off // a hole: it reads as zeros
		}
	}
	if len(p) >= cap(s.buf)/2 {
		if err := s.flush(); err != nil {
			return err
		}
		if err := s.preallocate(off + int64(len(p))); err != nil {
			return err
		}
		if _, err := writeback.WriteAt(s.out.wa, p, off); err != nil {
			return writeError(s.out.name, fmt.Sprintf("writing %d bytes at offset %d", len(p), off), err)
		}
		s.bufOff = off + int64(len(p))
		return nil
	}
	if len(s.buf)+len(p) > cap(s.buf) {
		if err := s.flush(); err != nil {
			return err
		}
	}
	s.buf = append(s.buf, p...)
	return nil
}

// q2Reserve is how far ahead of the writes the file's blocks are reserved with
// fallocate: writing into reserved blocks costs the kernel far less than allocating them
// write by write (qemu reserves each allocation the same way), and a full disk shows up
// before the data is written. Commit cuts the file back to its size.
const q2Reserve = 64 << 20

// preallocate reserves the file's blocks up to at least end.
func (s *q2Space) preallocate(end int64) error {
	if s.noPrealloc || end <= s.reserved {
		return nil
	}
	f, ok := s.out.wa.(*os.File)
	if !ok {
		return nil
	}
	to := alignUp(end, q2Reserve)
	err := syscall.Fallocate(int(f.Fd()), 0, s.reserved, to-s.reserved)
	switch {
	case err == nil:
		s.reserved = to
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return writeError(s.out.name, fmt.Sprintf("reserving space up to offset %d", to), err)
	default:
		s.noPrealloc = true // not supported here: plain writes
	}
	return nil
}

func (s *q2Space) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	if err := s.preallocate(s.bufOff + int64(len(s.buf))); err != nil {
		return err
	}
	if _, err := writeback.WriteAt(s.out.wa, s.buf, s.bufOff); err != nil {
		return writeError(s.out.name, fmt.Sprintf("writing %d bytes at offset %d", len(s.buf), s.bufOff), err)
	}
	s.bufOff += int64(len(s.buf))
	s.buf = s.buf[:0]
	return nil
}

// ref adds one reference to every cluster that [off, off+n) touches.
func (s *q2Space) ref(off, n int64) error {
	for c := off / s.cs; c <= (off+n-1)/s.cs; c++ {
		if err := s.inc(c); err != nil {
			return err
		}
	}
	return nil
}

// block returns the pending refcount block that holds cluster c's entry.
func (s *q2Space) block(c int64) ([]byte, int64, error) {
	b := c / s.perBlk
	i := b - s.rcBase
	if i < 0 || i > int64(len(s.pending))+1<<20 {
		return nil, 0, fmt.Errorf("%s: internal error: refcount of cluster %d in block %d, the first pending block is %d", s.out.name, c, b, s.rcBase)
	}
	for int64(len(s.pending)) <= i {
		var blk []byte
		if n := len(s.spare); n > 0 {
			blk, s.spare = s.spare[n-1], s.spare[:n-1]
			clear(blk)
		} else {
			blk = make([]byte, s.cs)
		}
		s.pending = append(s.pending, blk)
	}
	return s.pending[i], c % s.perBlk, nil
}

func (s *q2Space) get(c int64) (uint64, error) {
	blk, e, err := s.block(c)
	if err != nil {
		return 0, err
	}
	return q2RefGet(blk, e, s.rbits), nil
}

func (s *q2Space) inc(c int64) error {
	blk, e, err := s.block(c)
	if err != nil {
		return err
	}
	v := q2RefGet(blk, e, s.rbits)
	if v >= s.rmax {
		return fmt.Errorf("%s: internal error: refcount of cluster %d overflows %d bits", s.out.name, c, s.rbits)
	}
	q2RefSet(blk, e, s.rbits, v+1)
	return nil
}

// settle writes out every pending refcount block that covers only clusters before end.
// Each lands at end, in a later block's range, and is counted there.
func (s *q2Space) settle() error {
	for (s.rcBase+1)*s.perBlk <= s.end/s.cs {
		blk := s.pending[0]
		copy(s.pending, s.pending[1:])
		s.pending = s.pending[:len(s.pending)-1]
		s.rcBase++
		off, err := s.place(blk)
		if err != nil {
			return err
		}
		s.rtable = append(s.rtable, uint64(off))
		s.spare = append(s.spare, blk)
		if int64(len(s.rtable))*8 > q2MaxRefTable {
			return fmt.Errorf("%s: the image outgrows qemu's refcount table limit (%d bytes) at %d bytes: use a larger cluster_size or a smaller refcount_bits", s.out.name, q2MaxRefTable, s.end)
		}
	}
	return nil
}

// finish appends the remaining refcount blocks and the refcount table, both counted in
// the blocks themselves, flushes, and returns the table's offset and size in clusters and
// the file's final size.
func (s *q2Space) finish() (rtOff, rtClusters, fileSize int64, err error) {
	cur := alignUp(s.end, s.cs) / s.cs
	// The smallest n (clusters in the file) such that the blocks needed to cover n
	// clusters, plus the table that points at them, fit exactly after cur.
	n := cur
	var nb, t int64
	for {
		nb = (n + s.perBlk - 1) / s.perBlk
		t = (nb*8 + s.cs - 1) / s.cs
		next := cur + (nb - s.rcBase) + t
		if next == n {
			break
		}
		n = next
	}
	if nb*8 > q2MaxRefTable {
		return 0, 0, 0, fmt.Errorf("%s: the image needs a refcount table of %d bytes, more than qemu's limit (%d): use a larger cluster_size or a smaller refcount_bits", s.out.name, nb*8, q2MaxRefTable)
	}
	for c := cur; c < n; c++ {
		if err := s.inc(c); err != nil {
			return 0, 0, 0, err
		}
	}
	if int64(len(s.pending)) != nb-s.rcBase {
		return 0, 0, 0, fmt.Errorf("%s: internal error: %d refcount blocks pending, want %d", s.out.name, len(s.pending), nb-s.rcBase)
	}
	for i, blk := range s.pending {
		off := (cur + int64(i)) * s.cs
		if err := s.write(off, blk); err != nil {
			return 0, 0, 0, err
		}
		s.rtable = append(s.rtable, uint64(off))
	}
	s.pending = s.pending[:0]
	rtOff = (cur + nb - s.rcBase) * s.cs
	table := make([]byte, t*s.cs)
	for i, off := range s.rtable {
		binary.BigEndian.PutUint64(table[8*i:], off)
	}
	if err := s.write(rtOff, table); err != nil {
		return 0, 0, 0, err
	}
	if err := s.flush(); err != nil {
		return 0, 0, 0, err
	}
	s.end = n * s.cs
	return rtOff, t, s.end, nil
}

// q2RefGet reads entry e of a refcount block with entries of width bits: sub-byte
// entries start at the least significant bit, wider ones are big-endian.
func q2RefGet(blk []byte, e int64, bits uint) uint64 {
	switch bits {
	case 1, 2, 4:
		bit := e * int64(bits)
		return uint64(blk[bit/8]>>(bit%8)) & (1<<bits - 1)
	case 8:
		return uint64(blk[e])
	case 16:
		return uint64(binary.BigEndian.Uint16(blk[2*e:]))
	case 32:
		return uint64(binary.BigEndian.Uint32(blk[4*e:]))
	}
	return binary.BigEndian.Uint64(blk[8*e:])
}

func q2RefSet(blk []byte, e int64, bits uint, v uint64) {
	switch bits {
	case 1, 2, 4:
		bit := e * int64(bits)
		mask := byte(1<<bits-1) << (bit % 8)
		blk[bit/8] = blk[bit/8]&^mask | byte(v)<<(bit%8)&mask
	case 8:
		blk[e] = byte(v)
	case 16:
		binary.BigEndian.PutUint16(blk[2*e:], uint16(v))
	case 32:
		binary.BigEndian.PutUint32(blk[4*e:], uint32(v))
	default:
		binary.BigEndian.PutUint64(blk[8*e:], v)
	}
}
