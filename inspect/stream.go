package inspect

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"slices"
)

// Stream inspects an image whose bytes arrive in order, once, with no seeking: an upload.
// It is an io.Writer; Close gives the verdict, the same verdict Examine gives for the same
// bytes as a file.
//
// How: the stream keeps the first streamHead bytes, a ring of the last streamTail bytes,
// and the metadata regions the parsers ask for. At fixed byte offsets (the early probe
// points, the end of the head, and the end of each region asked for) it runs the very same
// parser that Open runs, over a reader that serves what has been kept and answers "not yet"
// for bytes still to come, recording them as regions to keep. Because those decision points
// are byte offsets, never Write boundaries, the verdict does not depend on how the stream is
// chunked. Memory stays under 1 MiB: the head, the tail, at most streamRegionBudget bytes of
// regions, and the state of the digests an OVA manifest asks for.
//
// A stream may be decided before its end: content that cannot be the declared format (as
// soon as the magic could have been seen: byte 512 for most formats), or metadata that is
// unsafe whatever follows (a qcow2 backing file in the first cluster). Write then returns a
// *RejectedError so that a copy stops; the caller may keep writing (Close then gives the
// complete verdict, identical to Examine's) or stop and call Abort, which keeps the early
// verdict.
type Stream struct {
	opt OpenOptions

	pos     int64
	head    []byte // the first min(pos, streamHead) bytes
	ring    []byte // the last streamTail bytes, at ring[p % streamTail]
	regions []*streamRegion
	hashes  []*streamHash
	budget  int64 // region bytes still allowed

	problem   *Finding // why the final parse could not read something (reported by Close)
	tooLarge  []int64  // offsets of regions refused because the budget was spent
	finishing bool     // the final parse is running
	early     *Verdict // decided before the end
	earlyAt   int64
	final     *Verdict
	done      bool
}

// Limits of the stream inspector.
const (
	streamHead = probeHead
	streamTail = probeTail
	// streamRegionBudget bounds the metadata kept beyond the head and the tail. The largest
	// structures parsers read at open are an OVF descriptor (ovf.go caps it) and a vmdk
	// descriptor; 512 KiB keeps the whole inspector under 1 MiB.
	streamRegionBudget = 512 << 10
	streamMaxRegions   = 4096
	// streamMaxHashes bounds the digests kept running at once (one per OVA member and
	// algorithm).
	streamMaxHashes = 4096
)

// earlyProbePoints are the offsets at which the magic of a declared format is checked.
var earlyProbePoints = [...]int64{512, 4096}

type streamRegion struct {
	off    int64
	buf    []byte
	filled int // bytes of buf received so far (always a prefix)
}

func (r *streamRegion) end() int64     { return r.off + int64(len(r.buf)) }
func (r *streamRegion) complete() bool { return r.filled == len(r.buf) }

type streamHash struct {
	off, n int64
	algo   string
	h      hash.Hash
	sum    []byte
}

// errNotYet: the bytes asked for have not arrived; errUnreachable: they went by unkept.
var (
	errNotYet      = errors.New("stream: bytes not arrived yet")
	errUnreachable = errors.New("stream: bytes went by before they were asked for")
)

// RejectedError is what Write returns once the stream has been decided against.
type RejectedError struct {
	Offset  int64 // bytes seen when the decision was made
	Verdict Verdict
}

func (e *RejectedError) Error() string {
	msg := "image rejected"
	if len(e.Verdict.Findings) > 0 {
		msg += ": " + e.Verdict.Findings[0].String()
	}
	return fmt.Sprintf("%s (decided at byte %d)", msg, e.Offset)
}

// ErrRejected matches every *RejectedError.
var ErrRejected = errors.New("image rejected")

func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// NewStream starts inspecting a stream. opt.Format is the declared format ("" to detect);
// Name, MaxVirtualSize and Disk apply as for Open; other files are never followed.
func NewStream(opt OpenOptions) *Stream {
	opt.AllowBacking = false
	return &Stream{
		opt:    opt,
		head:   make([]byte, 0, streamHead),
		ring:   make([]byte, streamTail),
		budget: streamRegionBudget,
	}
}

// Write takes the next bytes of the image. It always consumes all of p; the error is a
// *RejectedError once the stream has been decided against.
func (s *Stream) Write(p []byte) (int, error) {
	if s.done {
		return 0, errors.New("inspect: write after Close")
	}
	total := len(p)
	for len(p) > 0 {
		next := s.nextEvent()
		n := len(p)
		if rem := next - s.pos; int64(n) > rem {
			n = int(rem)
		}
		s.consume(p[:n])
		p = p[n:]
		if s.pos == next {
			s.event()
		}
	}
	if s.early != nil {
		return total, &RejectedError{Offset: s.earlyAt, Verdict: *s.early}
	}
	return total, nil
}

// Offset is the number of bytes seen.
func (s *Stream) Offset() int64 { return s.pos }

// Decided returns the verdict once there is one: early, or after Close.
func (s *Stream) Decided() (Verdict, bool) {
	if s.final != nil {
		return *s.final, true
	}
	if s.early != nil {
		return *s.early, true
	}
	return Verdict{}, false
}

// HoldBack is how many bytes at the end of a stream a relay must hold back until Close has
// given the verdict: formats whose proof is at the end (a fixed vhd's footer, a
// streamOptimized vmdk's footer) are only decided there.
func (s *Stream) HoldBack() int64 { return streamTail }

// Close ends the stream and returns its complete verdict (also kept for Decided).
func (s *Stream) Close() Verdict {
	if s.final != nil {
		return *s.final
	}
	s.done = true
	s.finishing = true
	v := s.parse(true)
	if s.problem != nil && !v.Has(s.problem.Code) {
		v.Findings = append(v.Findings, *s.problem)
	}
	s.final = &v
	return v
}

// Abort ends a stream that will not be completed (the relay stopped after a rejection, or
// the client went away). The verdict is the early one if there was one; otherwise the
// stream is reported as truncated.
func (s *Stream) Abort() Verdict {
	if s.final != nil {
		return *s.final
	}
	s.done = true
	v := Verdict{Format: s.opt.Format, Err: fmt.Errorf("%s: stream ended after %d bytes without a verdict", s.opt.Name, s.pos)}
	if s.early != nil {
		v = *s.early
	} else {
		v.Findings = []Finding{{FindMalformed, v.Err.Error()}}
	}
	s.final = &v
	return v
}

// nextEvent is the next offset at which the stream must stop and think.
func (s *Stream) nextEvent() int64 {
	next := int64(math.MaxInt64)
	consider := func(at int64) {
		if at > s.pos && at < next {
			next = at
		}
	}
	for _, p := range earlyProbePoints {
		consider(p)
	}
	consider(streamHead)
	for _, r := range s.regions {
		if !r.complete() {
			consider(r.end())
		}
	}
	for _, h := range s.hashes {
		if h.sum == nil {
			consider(h.off + h.n)
		}
	}
	return next
}

// consume records p, the bytes at s.pos, wherever they are wanted.
func (s *Stream) consume(p []byte) {
	start, end := s.pos, s.pos+int64(len(p))
	if start < streamHead {
		s.head = append(s.head, p[:min(int64(len(p)), streamHead-start)]...)
	}
	for _, r := range s.regions {
		if r.complete() || r.off >= end || r.end() <= start {
			continue
		}
		from := max(start, r.off+int64(r.filled))
		to := min(end, r.end())
		if from < to {
			copy(r.buf[from-r.off:to-r.off], p[from-start:to-start])
			r.filled = int(to - r.off)
		}
	}
	for _, h := range s.hashes {
		if h.sum != nil || h.off >= end || h.off+h.n <= start {
			continue
		}
		from, to := max(start, h.off), min(end, h.off+h.n)
		h.h.Write(p[from-start : to-start])
	}
	// the tail ring
	q := p
	if len(q) > streamTail {
		q = q[len(q)-streamTail:]
	}
	at := (end - int64(len(q))) % streamTail
	n := copy(s.ring[at:], q)
	copy(s.ring, q[n:])
	s.pos = end
}

// event runs at a decision point.
func (s *Stream) event() {
	for _, h := range s.hashes {
		if h.sum == nil && h.off+h.n == s.pos {
			h.sum = h.h.Sum(nil)
			h.h = nil
		}
	}
	if s.early != nil {
		return
	}
	if s.pos <= streamHead {
		if v, bad := s.earlyMismatch(); bad {
			s.decide(v)
			return
		}
	}
	if s.pos < streamHead {
		return
	}
	if !s.certain() {
		// The format is not settled by the head (raw, or a format proved at the end): run the
		// parser only to learn which regions to keep, and decide at the end.
		s.parse(false)
		return
	}
	if v := s.parse(false); v.Err == nil && len(v.Findings) > 0 {
		s.decide(v)
	}
}

func (s *Stream) decide(v Verdict) {
	s.early = &v
	s.earlyAt = s.pos
}

// headFormats are formats whose magic is in the first 512 bytes; a declared one that is not
// there by byte 512 is not what was declared. lateHeadFormats are proved within the head.
var (
	headFormats     = []Format{QCOW2, QED, VHDX, VDI, LUKS}
	lateHeadFormats = []Format{VMDK, OVF, ISO, OVA}
)

// earlyMismatch decides at the early probe points whether the head rules out the declared
// format.
func (s *Stream) earlyMismatch() (Verdict, bool) {
	declared := s.opt.Format
	if declared == "" {
		return Verdict{}, false
	}
	pd := &probeData{head: s.head, size: unknownSize}
	matches := probeAll(pd)
	checkAt := int64(streamHead)
	if slices.Contains(headFormats, declared) {
		checkAt = earlyProbePoints[0]
	}
	mismatch := func(what string) (Verdict, bool) {
		msg := fmt.Sprintf("%s: not a %s image (content looks like %s)", s.opt.Name, declared, what)
		return Verdict{Format: declared, Err: fmt.Errorf("%s: %w", msg, ErrWrongFormat),
			Findings: []Finding{{FindFormatMismatch, msg}}}, true
	}
	switch {
	case declared == Raw:
		// raw declared, but the head is another format (a fixed vhd is only known at the end)
		for _, m := range matches {
			if slices.Contains(headFormats, m) || (slices.Contains(lateHeadFormats, m) && s.pos == streamHead) {
				return mismatch(string(m))
			}
		}
	case slices.Contains(headFormats, declared) || slices.Contains(lateHeadFormats, declared):
		if s.pos >= checkAt && !slices.Contains(matches, declared) {
			what := "raw data"
			if len(matches) > 0 {
				what = string(matches[0])
			}
			return mismatch(what)
		}
	}
	return Verdict{}, false
}

// certain reports whether the head alone settles the format (the declared one, or the one
// the head shows), so that findings from a parse of the head and the regions are final.
// Raw never is (a fixed vhd is proved by its footer), nor a format proved at the end.
func (s *Stream) certain() bool {
	pd := &probeData{head: s.head, size: unknownSize}
	f := s.opt.Format
	if f == "" {
		matches := probeAll(pd)
		if len(matches) == 0 {
			return false
		}
		f = matches[0]
	}
	spec, ok := specFor(f)
	return ok && f != Raw && spec.probe(pd)
}

// parse runs the format's parser over what the stream has kept. With final false the size
// is not known yet, and the regions the parser asks for are recorded to be kept.
func (s *Stream) parse(final bool) Verdict {
	size := unknownSize
	if final {
		size = s.pos
	}
	view := &streamView{s: s, size: size}
	var pd *probeData
	if final {
		var err error
		if pd, err = readProbe(view, size); err != nil {
			return verdictOf(nil, fmt.Errorf("%s: %w", s.opt.Name, err), s.opt)
		}
	} else {
		pd = &probeData{head: s.head, size: unknownSize}
	}
	o := &opener{r: view, size: size, sizeKnown: final, name: s.opt.Name, opt: s.opt, probe: pd, log: s.opt.Logger}
	o.digest, o.streaming = s.digest, true
	d, err := openWith(o, nil)
	return verdictOf(d, err, s.opt)
}

// streamView is the io.ReaderAt the parsers see: kept bytes are served, bytes to come are
// recorded as wanted.
type streamView struct {
	s    *Stream
	size int64
}

func (v *streamView) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	want := int64(len(p))
	var tailErr error
	if v.size != unknownSize {
		if off >= v.size {
			return 0, io.EOF
		}
		if off+want > v.size {
			want = v.size - off
			tailErr = io.EOF
		}
	}
	s := v.s
	end := off + want
	if end <= s.pos {
		if s.copyPast(p[:want], off) {
			return int(want), tailErr
		}
		s.note(off, fmt.Sprintf("metadata at offset %d (%d bytes) went by before the parser could know it was needed", off, want))
		return 0, errUnreachable
	}
	if v.size != unknownSize {
		s.note(off, fmt.Sprintf("metadata at offset %d (%d bytes) went by before the parser could know it was needed", off, want))
		return 0, errUnreachable
	}
	if off >= unknownSize/2 {
		return 0, errUnreachable // relative to an end not seen yet
	}
	return 0, s.want(off, want)
}

// copyPast copies bytes before s.pos from the head, the kept regions and the tail ring.
func (s *Stream) copyPast(dst []byte, off int64) bool {
	for len(dst) > 0 {
		n := 0
		switch {
		case off < int64(len(s.head)):
			n = copy(dst, s.head[off:])
		case off >= s.pos-min(s.pos, streamTail) && off < s.pos:
			at := off % streamTail
			lim := min(int64(len(dst)), s.pos-off, streamTail-at)
			n = copy(dst[:lim], s.ring[at:])
		default:
			for _, r := range s.regions {
				if off >= r.off && off < r.off+int64(r.filled) {
					n = copy(dst, r.buf[off-r.off:r.filled])
					break
				}
			}
		}
		if n == 0 {
			return false
		}
		dst, off = dst[n:], off+int64(n)
	}
	return true
}

// want records a region the parser needs and that has not (entirely) arrived.
func (s *Stream) want(off, n int64) error {
	for _, r := range s.regions {
		if off >= r.off && off+n <= r.end() {
			return errNotYet // already wanted; it is on its way
		}
	}
	if n > s.budget || len(s.regions) >= streamMaxRegions {
		s.tooLarge = append(s.tooLarge, off)
		return errUnreachable
	}
	r := &streamRegion{off: off, buf: make([]byte, n)}
	if off < s.pos {
		if !s.copyPast(r.buf[:s.pos-off], off) {
			return errUnreachable // the final parse reports it
		}
		r.filled = int(s.pos - off)
	}
	s.budget -= n
	s.regions = append(s.regions, r)
	return errNotYet
}

// digest serves o.digest for the parsers: a digest of bytes still to come is computed as
// they pass.
func (s *Stream) digest(off, n int64, algo string) ([]byte, error) {
	for _, h := range s.hashes {
		if h.off == off && h.n == n && h.algo == algo {
			if h.sum != nil {
				return h.sum, nil
			}
			if s.done {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, errNotYet
		}
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("digest of %d bytes at offset %d", n, off)
	}
	if s.done && off+n > s.pos {
		return nil, io.ErrUnexpectedEOF
	}
	if len(s.hashes) >= streamMaxHashes {
		s.tooLarge = append(s.tooLarge, off)
		return nil, errUnreachable
	}
	h, err := newHash(algo)
	if err != nil {
		return nil, err
	}
	// Bytes that went by can still be hashed when the stream kept them (the head, a
	// region such as an OVF descriptor, the tail).
	if off < s.pos {
		var buf [4096]byte
		for at := off; at < min(s.pos, off+n); {
			k := min(int64(len(buf)), min(s.pos, off+n)-at)
			if !s.copyPast(buf[:k], at) {
				s.note(off, fmt.Sprintf("the %s digest of %d bytes at offset %d was asked for after those bytes went by", algo, n, off))
				return nil, errUnreachable
			}
			h.Write(buf[:k])
			at += k
		}
	}
	sh := &streamHash{off: off, n: n, algo: algo, h: h}
	s.hashes = append(s.hashes, sh)
	if off+n <= s.pos {
		sh.sum, sh.h = h.Sum(nil), nil
		return sh.sum, nil
	}
	return nil, errNotYet
}

// note records, during the final parse, the first thing the parser needed that the stream
// did not keep; Close adds it to the verdict. What the stream refused to keep for lack of
// budget is reported as FindTooLarge, anything else as FindStreamUnreachable.
func (s *Stream) note(off int64, msg string) {
	if !s.finishing || s.problem != nil {
		return
	}
	f := Finding{FindStreamUnreachable, s.opt.Name + ": " + msg}
	if slices.Contains(s.tooLarge, off) {
		f = Finding{FindTooLarge, fmt.Sprintf("%s: metadata at offset %d is more than a stream inspection keeps (%d bytes in all)", s.opt.Name, off, streamRegionBudget)}
	}
	s.problem = &f
}

// memory is the number of bytes the stream keeps (for tests of the 1 MiB bound).
func (s *Stream) memory() int64 {
	n := int64(cap(s.head) + cap(s.ring))
	for _, r := range s.regions {
		n += int64(cap(r.buf))
	}
	n += int64(len(s.hashes)) * 512 // a generous bound on a hash state
	return n
}
