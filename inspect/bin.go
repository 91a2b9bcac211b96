package inspect

import (
	"errors"
	"io"
	"math"
	"math/bits"
)

// maxMetadataRead caps any single metadata read (a table, a descriptor, an OVF) whatever a
// header claims. Structures larger than this are refused with FindTooLarge or a FormatError.
// 64 MiB holds the L1 table of a 64 PiB qcow2 with 64 KiB clusters, the BAT of a 130 TiB
// vhd, and more than any real descriptor.
const maxMetadataRead = 64 << 20

// readAt reads exactly n bytes at off. A short read is a FormatError naming the structure;
// other errors (including the stream inspector's "not yet seen") pass through unchanged so
// that callers and the stream inspector can tell them apart.
//
// n must already have been checked against a bound; readAt refuses more than
// maxMetadataRead as a last line of defence.
func readAt(r io.ReaderAt, off int64, n int64, f Format, structure string) ([]byte, error) {
	if n < 0 || n > maxMetadataRead {
		return nil, ferr(f, structure, "", off, n, "size out of range (limit %d bytes)", maxMetadataRead)
	}
	if off < 0 || off > math.MaxInt64-n {
		return nil, ferr(f, structure, "", off, nil, "offset out of range")
	}
	buf := make([]byte, n)
	got, err := r.ReadAt(buf, off)
	if got == len(buf) {
		return buf, nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, ferr(f, structure, "", off, nil, "truncated: %d of %d bytes before end of file", got, n)
	}
	return nil, err
}

// mul64 multiplies two non-negative int64 values, reporting overflow.
func mul64(a, b int64) (int64, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, false
	}
	return int64(lo), true
}

// add64 adds two non-negative int64 values, reporting overflow.
func add64(a, b int64) (int64, bool) {
	if a < 0 || b < 0 || a > math.MaxInt64-b {
		return 0, false
	}
	return a + b, true
}

// within reports whether [off, off+n) lies inside [0, size).
func within(off, n, size int64) bool {
	end, ok := add64(off, n)
	return off >= 0 && ok && end <= size
}

// alignUp rounds v up to a multiple of a (a power of two).
func alignUp(v, a int64) int64 { return (v + a - 1) &^ (a - 1) }

// isZero reports whether p holds only zero bytes.
func isZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// clear zeroes p.
func zero(p []byte) { clear(p) }

// cstring returns p up to its first NUL.
func cstring(p []byte) string {
	for i, b := range p {
		if b == 0 {
			return string(p[:i])
		}
	}
	return string(p)
}
