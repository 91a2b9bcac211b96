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

// Convert copies the virtual disk of src into dst: it walks src's extents, skips zero and
// unallocated runs without reading them, reads data runs in chunks with Options.Workers
// goroutines, turns all-zero blocks into zero chunks, and hands everything to dst (in
// guest order when dst's Layout asks for it). It calls dst.Commit at the end, or
// dst.Abort when anything fails or ctx is cancelled; the first error wins.
func Convert(ctx context.Context, src inspect.Image, dst Writer, opt Options) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	o := opt.withDefaults()
	size := src.Size()
	if size < 0 {
		return fmt.Errorf("convert: negative virtual size %d", size)
	}
	lay, err := dst.Begin(size)
	if err == nil {
		lay, err = lay.validate()
	}
	if err != nil {
		return abort(dst, err)
	}
	p := newPipeline(src, dst, lay, o, size)
	if err := p.run(ctx); err != nil {
		return abort(dst, err)
	}
	if err := ctx.Err(); err != nil {
		return abort(dst, err)
	}
	if err := dst.Commit(); err != nil {
		return abort(dst, err)
	}
	return nil
}

func abort(dst Writer, err error) error {
	if aerr := dst.Abort(); aerr != nil {
		return errors.Join(err, aerr)
	}
	return err
}

// pipeline is one run of Convert.
type pipeline struct {
	src  inspect.Image
	dst  Writer
	enc  Encoder // nil when dst has none
	lay  Layout
	o    Options
	size int64

	chunk int64 // bytes per data chunk: a multiple of gran and of the block size
	gran  int64 // zero-check granularity; 0 when FullyAllocated

	free   chan *slot // buffers not in use
	nslots int        // buffers allocated so far (only the producer touches it)
	work   chan *job  // data jobs for the workers
	order  chan *job  // every job in guest order (Ordered writers only)
}

// slot is one chunk buffer and the chunk list it is split into.
type slot struct {
	buf    []byte
	chunks []Chunk
}

// job is one run handed down the pipeline: a data chunk to read, or a zero run.
type job struct {
	off, n int64
	s      *slot         // nil for a zero run
	done   chan struct{} // closed when a worker has finished (Ordered only)
	err    error         // set before done is closed
}

// closedChan is the done channel of jobs that need no worker.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newPipeline(src inspect.Image, dst Writer, lay Layout, o Options, size int64) *pipeline {
	p := &pipeline{src: src, dst: dst, lay: lay, o: o, size: size}
	p.enc, _ = dst.(Encoder)
	step := lay.BlockSize
	if !o.FullyAllocated {
		p.gran = alignUp(o.SparseSize, lay.BlockSize)
		step = p.gran
	}
	p.chunk = alignUp(max(o.ChunkSize, step), step)
	p.free = make(chan *slot, o.Buffers)
	p.work = make(chan *job, o.Buffers)
	if lay.Ordered {
		// At most one zero run sits between two data jobs, and at most Buffers data
		// jobs are in flight, so this never holds the producer back for long.
		p.order = make(chan *job, 2*o.Buffers+2)
	}
	return p
}

func (p *pipeline) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.produce(ctx) })
	for range p.o.Workers {
		g.Go(func() error { return p.worker(ctx) })
	}
	if p.lay.Ordered {
		g.Go(func() error { return p.sequence(ctx) })
	}
	return g.Wait()
}

// produce walks the extents and emits zero runs and data chunks in guest order.
func (p *pipeline) produce(ctx context.Context) error {
	defer close(p.work)
	if p.order != nil {
		defer close(p.order)
	}
	if p.o.FullyAllocated {
		// -S 0: no scan at all. ReadAt costs nothing on zero extents (no I/O), so the
		// whole disk is read chunk by chunk and written as data.
		for off := int64(0); off < p.size; {
			end := min(alignDown(off, p.chunk)+p.chunk, p.size)
			if err := p.emitData(ctx, off, end); err != nil {
				return err
			}
			off = end
		}
		return nil
	}
	bs := p.lay.BlockSize
	zeroFrom := int64(0) // everything in [zeroFrom, cur.start) reads as zero
	var cur struct {
		start, end, win int64
		ok              bool
	}
	flush := func() error {
		if !cur.ok {
			return nil
		}
		cur.ok = false
		if err := p.emitZero(ctx, zeroFrom, cur.start); err != nil {
			return err
		}
		zeroFrom = cur.end
		return p.emitData(ctx, cur.start, cur.end)
	}
	for pos := int64(0); pos < p.size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := p.src.Extent(pos, extentWindow)
		if err != nil {
			return fmt.Errorf("reading the allocation map at guest offset %d: %w", pos, err)
		}
		if e.Start != pos || e.Length <= 0 || e.End() > p.size {
			return fmt.Errorf("convert: source extent %+v at guest offset %d does not tile the disk", e, pos)
		}
		pos = e.End()
		if e.ReadsZero() {
			continue
		}
		// A data run, widened to whole writer blocks and cut at chunk windows. Runs that
		// share a window share a chunk: reading the zeros between them costs no I/O, and
		// the zero check finds them again.
		s, end := alignDown(e.Start, bs), min(alignUp(e.End(), bs), p.size)
		if cur.ok && s < cur.end {
			s = cur.end
		}
		for s < end {
			win := s / p.chunk
			segEnd := min(end, (win+1)*p.chunk)
			if cur.ok && cur.win == win {
				cur.end = segEnd
			} else {
				if err := flush(); err != nil {
					return err
				}
				cur.start, cur.end, cur.win, cur.ok = s, segEnd, win, true
			}
			s = segEnd
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return p.emitZero(ctx, zeroFrom, p.size)
}

// emitZero hands a zero run on: straight to a positional writer, or into the ordered
// queue. Long runs are split at maxZeroChunk.
func (p *pipeline) emitZero(ctx context.Context, from, to int64) error {
	for from < to {
		n := min(to-from, maxZeroChunk)
		if p.order == nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := Chunk{Off: from, Len: n}
			if err := p.dst.Write(&c); err != nil {
				return err
			}
			p.o.Progress.Add(n)
		} else {
			j := &job{off: from, n: n, done: closedChan}
			select {
			case p.order <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		from += n
	}
	return nil
}

// emitData takes a buffer (waiting for one when all are in use) and queues a data job.
func (p *pipeline) emitData(ctx context.Context, from, to int64) error {
	s, err := p.getSlot(ctx)
	if err != nil {
		return err
	}
	j := &job{off: from, n: to - from, s: s}
	if p.order != nil {
		j.done = make(chan struct{})
		select {
		case p.order <- j:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case p.work <- j:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *pipeline) getSlot(ctx context.Context) (*slot, error) {
	select {
	case s := <-p.free:
		return s, nil
	default:
	}
	if p.nslots < p.o.Buffers {
		p.nslots++
		return &slot{buf: make([]byte, p.chunk)}, nil
	}
	select {
	case s := <-p.free:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *pipeline) putSlot(s *slot) {
	clear(s.chunks) // drop Encoded values
	s.chunks = s.chunks[:0]
	p.free <- s // never blocks: the channel holds every slot
}

func (p *pipeline) worker(ctx context.Context) error {
	for j := range p.work {
		err := ctx.Err()
		if err == nil {
			err = p.prepare(j)
		}
		if p.order != nil {
			j.err = err
			close(j.done)
			if err != nil {
				return err
			}
			continue
		}
		if err == nil {
			err = p.writeChunks(j)
		}
		p.putSlot(j.s)
		if err != nil {
			return err
		}
	}
	return nil
}

// prepare reads a data job, splits it into data and zero chunks, and encodes the data
// chunks.
func (p *pipeline) prepare(j *job) error {
	buf := j.s.buf[:j.n]
	n, err := p.src.ReadAt(buf, j.off)
	if n < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("reading guest offset %d (%d bytes): %w", j.off, len(buf), err)
	}
	j.s.chunks = p.split(j.off, buf, j.s.chunks[:0])
	if p.enc != nil {
		for i := range j.s.chunks {
			if c := &j.s.chunks[i]; !c.Zero() {
				if err := p.enc.Encode(c); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// split cuts data into runs of all-zero and not-all-zero blocks of p.gran bytes (aligned
// to p.gran in the guest), appending them to out.
func (p *pipeline) split(off int64, data []byte, out []Chunk) []Chunk {
	if p.gran == 0 {
		return append(out, Chunk{Off: off, Len: int64(len(data)), Data: data})
	}
	end := off + int64(len(data))
	runStart, runZero := off, false
	for pos := off; pos < end; {
		bEnd := min(alignDown(pos, p.gran)+p.gran, end)
		z := isZero(data[pos-off : bEnd-off])
		if pos == off {
			runZero = z
		} else if z != runZero {
			out = append(out, chunkOf(runStart, pos, runZero, data[runStart-off:pos-off]))
			runStart, runZero = pos, z
		}
		pos = bEnd
	}
	return append(out, chunkOf(runStart, end, runZero, data[runStart-off:]))
}

func chunkOf(from, to int64, zero bool, data []byte) Chunk {
	if zero {
		return Chunk{Off: from, Len: to - from}
	}
	return Chunk{Off: from, Len: to - from, Data: data}
}

func (p *pipeline) writeChunks(j *job) error {
	for i := range j.s.chunks {
		if err := p.dst.Write(&j.s.chunks[i]); err != nil {
			return err
		}
	}
	p.o.Progress.Add(j.n)
	return nil
}

// sequence writes the jobs in guest order for Ordered writers.
func (p *pipeline) sequence(ctx context.Context) error {
	for j := range p.order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if j.err != nil {
			return j.err
		}
		if j.s == nil {
			c := Chunk{Off: j.off, Len: j.n}
			if err := p.dst.Write(&c); err != nil {
				return err
			}
			p.o.Progress.Add(j.n)
			continue
		}
		err := p.writeChunks(j)
		p.putSlot(j.s)
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// zeros is compared against to find all-zero blocks: bytes.Equal is vectorised, and the
// array is never written, so its pages all map the kernel's zero page.
var zeros [1 << 20]byte

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func alignDown(x, a int64) int64 { return x - x%a }

func alignUp(x, a int64) int64 {
	if r := x % a; r != 0 {
		return x + a - r
	}
	return x
}
