package writeback

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestPacer(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := NewPacer(f)
	for _, c := range []struct{ size, started int64 }{
		{1 << 20, 0}, {Step - 1, 0}, {Step, Step}, {Step + 5<<20, Step}, {2*Step + 7, 2*Step + 7},
	} {
		if err := f.Truncate(c.size); err != nil {
			t.Fatal(err)
		}
		p.Written(c.size)
		if p.started != c.started {
			t.Errorf("after %d bytes: writeback started up to %d, want %d", c.size, p.started, c.started)
		}
	}
	NewPacer(struct{}{}).Written(Step) // no descriptor: nothing to do, no panic
}

// pieceRecorder records the calls it gets and fails the one at failAt (when not -1).
type pieceRecorder struct {
	calls  [][2]int64 // offset (or -1), length
	failAt int
}

func (r *pieceRecorder) call(off int64, n int) (int, error) {
	r.calls = append(r.calls, [2]int64{off, int64(n)})
	if len(r.calls)-1 == r.failAt {
		return n / 2, os.ErrClosed
	}
	return n, nil
}
func (r *pieceRecorder) WriteAt(b []byte, off int64) (int, error) { return r.call(off, len(b)) }
func (r *pieceRecorder) Write(b []byte) (int, error)              { return r.call(-1, len(b)) }

func TestPieces(t *testing.T) {
	b := make([]byte, 2*Piece+100)
	r := &pieceRecorder{failAt: -1}
	if n, err := WriteAt(r, b, 1000); n != len(b) || err != nil {
		t.Fatalf("WriteAt: %d, %v", n, err)
	}
	want := [][2]int64{{1000, Piece}, {1000 + Piece, Piece}, {1000 + 2*Piece, 100}}
	if !slices.Equal(r.calls, want) {
		t.Errorf("WriteAt calls %v, want %v", r.calls, want)
	}
	r = &pieceRecorder{failAt: -1}
	if n, err := Write(r, b[:Piece]); n != Piece || err != nil || len(r.calls) != 1 {
		t.Errorf("Write of one piece: %d, %v, calls %v", n, err, r.calls)
	}
	r = &pieceRecorder{failAt: 1}
	if n, err := Write(r, b); n != Piece+Piece/2 || err != os.ErrClosed || len(r.calls) != 2 {
		t.Errorf("Write failing in the second piece: %d, %v, calls %v", n, err, r.calls)
	}
	r = &pieceRecorder{failAt: 2}
	if n, err := WriteAt(r, b, 0); n != 2*Piece+50 || err != os.ErrClosed {
		t.Errorf("WriteAt failing in the last piece: %d, %v", n, err)
	}
	if n, err := WriteAt(r, nil, 0); n != 0 || err != nil {
		t.Errorf("WriteAt of nothing: %d, %v", n, err)
	}
}
