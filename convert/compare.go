package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sync/errgroup"

	"glimpse/inspect"
)

// CompareOptions tune Compare. The zero value gives the defaults of Options.
type CompareOptions struct {
	// Strict is qemu-img compare's -s: images of different virtual sizes differ.
	Strict bool
	// Workers, ChunkSize and Progress mean what they mean in Options (Progress counts
	// the bytes of the longer image).
	Workers   int
	ChunkSize int64
	Progress  Progress
}

// CompareResult is what Compare found.
type CompareResult struct {
	// Identical is true when both disks read the same (a shorter disk reads as zeros past
	// its end, as qemu-img compare treats it, unless Strict).
	Identical bool
	// SizeA and SizeB are the virtual sizes.
	SizeA, SizeB int64
	// Offset is the first guest offset where the disks differ, or -1. Like qemu-img it
	// is the start of the first differing 512-byte sector. When it is at or past the
	// shorter size, the difference lies in the longer disk's tail.
	Offset int64
}

// SizeMismatch reports whether the virtual sizes differ.
func (r CompareResult) SizeMismatch() bool { return r.SizeA != r.SizeB }

// Compare reports whether two disks read the same, and where they first differ, exactly
// as `qemu-img compare` does. Runs that read as zeros in both are skipped without
// reading; a run that is zero in one disk only is read from the other alone. Reads go
// through Workers goroutines, in chunks, in guest order of results.
func Compare(ctx context.Context, a, b inspect.Image, opt CompareOptions) (CompareResult, error) {
	o := Options{Workers: opt.Workers, ChunkSize: opt.ChunkSize, Progress: opt.Progress}
	if err := o.Validate(); err != nil {
		return CompareResult{}, err
	}
	o = o.withDefaults()
	r := CompareResult{SizeA: a.Size(), SizeB: b.Size(), Offset: -1}
	if opt.Strict && r.SizeMismatch() {
		return r, nil
	}
	c := &comparer{a: a, b: b, o: o}
	off, err := c.run(ctx)
	if err != nil {
		return r, err
	}
	r.Offset = off
	r.Identical = off < 0
	return r, nil
}

type comparer struct {
	a, b inspect.Image
	o    Options
}

// cmpJob is one range to check: both sides read and compared, or one side read and
// checked for zeros.
type cmpJob struct {
	off, n       int64
	readA, readB bool
	done         chan struct{}
	mismatch     int64 // first differing offset in the job, or -1
	err          error
}

// errFound stops the workers once the first mismatch is known.
var errFound = errors.New("mismatch found")

func (c *comparer) run(ctx context.Context) (int64, error) {
	g, ctx := errgroup.WithContext(ctx)
	work := make(chan *cmpJob, c.o.Buffers)
	order := make(chan *cmpJob, c.o.Buffers)
	g.Go(func() error {
		defer close(work)
		defer close(order)
		return c.produce(ctx, work, order)
	})
	for range c.o.Workers {
		g.Go(func() error {
			var bufs [2][]byte // each worker's own: memory is Workers × 2 × ChunkSize
			for j := range work {
				if bufs[0] == nil {
					bufs = [2][]byte{make([]byte, c.o.ChunkSize), make([]byte, c.o.ChunkSize)}
				}
				if err := ctx.Err(); err != nil {
					j.err = err
				} else {
					j.mismatch, j.err = c.check(j, bufs)
				}
				close(j.done)
			}
			return nil
		})
	}
	found := int64(-1)
	g.Go(func() error {
		for j := range order {
			select {
			case <-j.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if j.err != nil {
				return j.err
			}
			if j.mismatch >= 0 {
				found = j.mismatch
				return errFound
			}
			c.o.Progress.Add(j.n)
		}
		return nil
	})
	if err := g.Wait(); err != nil && !errors.Is(err, errFound) {
		return -1, err
	}
	return found, nil
}

// produce walks both allocation maps together over the common size, then the longer
// disk's tail, and queues the ranges that need reading.
func (c *comparer) produce(ctx context.Context, work, order chan<- *cmpJob) error {
	sa, sb := c.a.Size(), c.b.Size()
	common := min(sa, sb)
	var ea, eb inspect.Extent
	emit := func(from, to int64, readA, readB bool) error {
		if !readA && !readB {
			c.o.Progress.Add(to - from)
			return nil
		}
		for from < to {
			end := min(to, alignDown(from, c.o.ChunkSize)+c.o.ChunkSize)
			j := &cmpJob{off: from, n: end - from, readA: readA, readB: readB, done: make(chan struct{})}
			select {
			case order <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case work <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
			from = end
		}
		return nil
	}
	next := func(img inspect.Image, e *inspect.Extent, pos, limit int64) error {
		if pos < e.End() && e.Length > 0 {
			return nil
		}
		x, err := img.Extent(pos, min(extentWindow, limit-pos))
		if err != nil {
			return fmt.Errorf("reading the allocation map at guest offset %d: %w", pos, err)
		}
		if x.Start != pos || x.Length <= 0 || x.End() > limit {
			return fmt.Errorf("compare: extent %+v at guest offset %d does not tile the disk", x, pos)
		}
		*e = x
		return nil
	}
	for pos := int64(0); pos < common; {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := next(c.a, &ea, pos, common); err != nil {
			return err
		}
		if err := next(c.b, &eb, pos, common); err != nil {
			return err
		}
		end := min(ea.End(), eb.End())
		if err := emit(pos, end, !ea.ReadsZero(), !eb.ReadsZero()); err != nil {
			return err
		}
		pos = end
	}
	// The tail of the longer disk must read as zeros.
	long, size := c.a, sa
	readA := true
	if sb > sa {
		long, size, readA = c.b, sb, false
	}
	var e inspect.Extent
	for pos := common; pos < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := next(long, &e, pos, size); err != nil {
			return err
		}
		nz := !e.ReadsZero()
		if err := emit(pos, e.End(), nz && readA, nz && !readA); err != nil {
			return err
		}
		pos = e.End()
	}
	return nil
}

// check reads one job and returns the first differing offset (qemu-img's: the start of
// the first differing 512-byte sector, counted from the job's start), or -1.
func (c *comparer) check(j *cmpJob, bufs [2][]byte) (int64, error) {
	var pa, pb []byte
	if j.readA {
		pa = bufs[0][:j.n]
		if err := readFull(c.a, pa, j.off); err != nil {
			return -1, err
		}
	}
	if j.readB {
		pb = bufs[1][:j.n]
		if err := readFull(c.b, pb, j.off); err != nil {
			return -1, err
		}
	}
	var i int
	switch {
	case pa != nil && pb != nil:
		i = firstDiff(pa, pb)
	case pa != nil:
		i = firstNonZero(pa)
	default:
		i = firstNonZero(pb)
	}
	if i < 0 {
		return -1, nil
	}
	return j.off + alignDown(int64(i), 512), nil
}

func readFull(img inspect.Image, p []byte, off int64) error {
	n, err := img.ReadAt(p, off)
	if n < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("reading guest offset %d (%d bytes): %w", off, len(p), err)
	}
	return nil
}

// firstDiff returns the index of the first byte where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	const block = 4 << 10
	for i := 0; i < len(a); i += block {
		j := min(i+block, len(a))
		if bytes.Equal(a[i:j], b[i:j]) {
			continue
		}
		for k := i; k < j; k++ {
			if a[k] != b[k] {
				return k
			}
		}
	}
	return -1
}

// firstNonZero returns the index of the first non-zero byte of p, or -1.
func firstNonZero(p []byte) int {
	const block = 4 << 10
	for i := 0; i < len(p); i += block {
		j := min(i+block, len(p))
		if isZero(p[i:j]) {
			continue
		}
		for k := i; k < j; k++ {
			if p[k] != 0 {
				return k
			}
		}
	}
	return -1
}
