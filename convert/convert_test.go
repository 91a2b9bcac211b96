package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// matrixFormats are the source formats the conversion matrix covers; nil means every
// format buildSources makes.
var matrixFormats []inspect.Format // every format

// convertFile converts src into a raw file and returns the file's path.
func convertFile(t testing.TB, img inspect.Image, dst string, opt Options) {
	t.Helper()
	w, err := CreateRaw(dst, RawOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Convert(context.Background(), img, w, opt); err != nil {
		t.Fatalf("Convert: %v", err)
	}
}

// streamSHA256 converts img to a RawStream and returns the SHA-256 and length of what
// came out.
func streamSHA256(t testing.TB, img inspect.Image, opt Options) (string, int64) {
	t.Helper()
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := Convert(context.Background(), img, NewRawStream(cw, "-"), opt); err != nil {
		t.Fatalf("Convert to a stream: %v", err)
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// TestConvertMatrix converts every readable source format to raw, as a file and as a
// stream, with the defaults and with small chunks over many workers, and checks the
// result against qemu-img convert -O raw.
func TestConvertMatrix(t *testing.T) {
	dir := t.TempDir()
	for _, s := range buildSources(t, dir, matrixFormats...) {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			want, wantSize := reference(t, s)
			img := openSource(t, s)
			if img.Size() != wantSize {
				t.Fatalf("virtual size %d, qemu-img converts %d bytes", img.Size(), wantSize)
			}
			out := filepath.Join(t.TempDir(), "out.raw")
			for _, opt := range []Options{{}, {Workers: 5, ChunkSize: 64 << 10, Buffers: 7}, {Workers: 1, SparseSize: 64 << 10}} {
				convertFile(t, img, out, opt)
				if got, n := qemutest.FileSHA256(t, out); got != want || n != wantSize {
					t.Errorf("%+v: file SHA-256 %s (%d bytes), qemu-img gives %s (%d bytes)", opt, got, n, want, wantSize)
				}
			}
			if got, n := streamSHA256(t, img, Options{Workers: 3, ChunkSize: 128 << 10}); got != want || n != wantSize {
				t.Errorf("stream SHA-256 %s (%d bytes), qemu-img gives %s (%d bytes)", got, n, want, wantSize)
			}
			if got, _ := streamSHA256(t, img, Options{FullyAllocated: true}); got != want {
				t.Errorf("-S 0 stream SHA-256 %s, qemu-img gives %s", got, want)
			}
		})
	}
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

// nonZeroBlocks counts the bytes in bs-sized blocks of a file that hold a non-zero byte.
func nonZeroBlocks(t testing.TB, path string, bs int) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for i := 0; i < len(b); i += bs {
		if !isZero(b[i:min(i+bs, len(b))]) {
			n += int64(bs)
		}
	}
	return n
}

// TestConvertSparse checks that zero runs become holes (st_blocks), that -S 0 fills
// them, and that a larger -S leaves shorter zero runs allocated.
func TestConvertSparse(t *testing.T) {
	dir := t.TempDir()
	srcs := buildSources(t, dir, inspect.Raw)
	// A fully allocated copy of the base, so that every zero run must be found by the
	// zero check rather than by SEEK_HOLE.
	dense := filepath.Join(dir, "dense.raw")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "raw", "-S", "0", srcs[0].path, dense)
	if a := allocated(t, dense); a < baseSize-4096 {
		t.Fatalf("qemu-img -S 0 left the source sparse (%d bytes allocated)", a)
	}
	img := openSource(t, source{name: "dense", path: dense})
	data := nonZeroBlocks(t, dense, 4096)

	out := filepath.Join(dir, "out.raw")
	convertFile(t, img, out, Options{})
	if a := allocated(t, out); a > data+64<<10 {
		t.Errorf("default -S: %d bytes allocated, only %d bytes of 4 KiB blocks hold data", a, data)
	}
	if st, _ := os.Stat(out); st.Size() != baseSize {
		t.Errorf("size %d, want %d", st.Size(), baseSize)
	}

	convertFile(t, img, out, Options{FullyAllocated: true})
	if a := allocated(t, out); a < baseSize-4096 {
		t.Errorf("-S 0: %d bytes allocated of %d", a, int64(baseSize))
	}

	// With -S 64k the 4 KiB zero hole inside the random run is written, the 64 KiB one
	// (aligned) is not.
	convertFile(t, img, out, Options{SparseSize: 64 << 10})
	a64 := allocated(t, out)
	convertFile(t, img, out, Options{})
	a4 := allocated(t, out)
	if a64 <= a4 {
		t.Errorf("-S 64k allocated %d bytes, not more than -S 4k's %d", a64, a4)
	}
	if got, _ := qemutest.FileSHA256(t, out); got != mustSHA(t, dense) {
		t.Error("sparse output differs from the source")
	}
}

func mustSHA(t testing.TB, p string) string {
	s, _ := qemutest.FileSHA256(t, p)
	return s
}

// fakeImage is an in-memory inspect.Image with a given extent map; data extents read a
// pattern that depends on the offset. Hooks inject errors and delays.
type fakeImage struct {
	size    int64
	extents []inspect.Extent
	// readHook runs before every ReadAt; its error is returned.
	readHook func(p []byte, off int64) error
	// extentErrAt makes Extent fail for offsets at or past it (when > 0).
	extentErrAt int64
	reads       atomic.Int64 // bytes read from data extents
}

func patternByte(off int64) byte { return byte(off*7+off>>9) | 1 }

func (f *fakeImage) Info() inspect.Info {
	return inspect.Info{Filename: "fake", Format: inspect.QCOW2, VirtualSize: f.size}
}
func (f *fakeImage) Size() int64               { return f.size }
func (f *fakeImage) Check() inspect.Report     { return inspect.Report{} }
func (f *fakeImage) Safety() []inspect.Finding { return nil }
func (f *fakeImage) Close() error              { return nil }

func (f *fakeImage) find(off int64) inspect.Extent {
	i := sort.Search(len(f.extents), func(i int) bool { return f.extents[i].End() > off })
	return f.extents[i]
}

func (f *fakeImage) Extent(off, n int64) (inspect.Extent, error) {
	if off < 0 || off >= f.size {
		return inspect.Extent{}, fmt.Errorf("fake: extent offset %d outside the disk", off)
	}
	if f.extentErrAt > 0 && off >= f.extentErrAt {
		return inspect.Extent{}, errFakeExtent
	}
	e := f.find(off)
	end := e.End()
	if n > 0 {
		end = min(end, off+n)
	}
	if e.Offset >= 0 {
		e.Offset += off - e.Start
	}
	e.Start, e.Length = off, end-off
	return e, nil
}

var (
	errFakeRead   = errors.New("fake read error")
	errFakeExtent = errors.New("fake extent error")
	errFakeWrite  = errors.New("fake write error")
)

func (f *fakeImage) ReadAt(p []byte, off int64) (int, error) {
	if f.readHook != nil {
		if err := f.readHook(p, off); err != nil {
			return 0, err
		}
	}
	if off >= f.size {
		return 0, io.EOF
	}
	var tail error
	if int64(len(p)) > f.size-off {
		p, tail = p[:f.size-off], io.EOF
	}
	for i := 0; i < len(p); {
		pos := off + int64(i)
		e := f.find(pos)
		n := int(min(int64(len(p)-i), e.End()-pos))
		if e.ReadsZero() {
			clear(p[i : i+n])
		} else {
			for k := range n {
				p[i+k] = patternByte(pos + int64(k))
			}
			f.reads.Add(int64(n))
		}
		i += n
	}
	return len(p), tail
}

func (f *fakeImage) clone() *fakeImage {
	return &fakeImage{size: f.size, extents: f.extents, readHook: f.readHook, extentErrAt: f.extentErrAt}
}

// newFake builds a fake image from (kind, length) pairs.
func newFake(runs ...any) *fakeImage {
	f := &fakeImage{}
	for i := 0; i < len(runs); i += 2 {
		k, n := runs[i].(inspect.Kind), int64(runs[i+1].(int))
		e := inspect.Extent{Start: f.size, Length: n, Kind: k, Offset: -1}
		if k == inspect.KindData {
			e.Offset = f.size + 1<<20
		}
		f.extents = append(f.extents, e)
		f.size += n
	}
	return f
}

// want is the guest content of a fake image.
func (f *fakeImage) want() []byte {
	b := make([]byte, f.size)
	f.ReadAt(b, 0)
	return b
}

// recorder is a Writer that keeps what it gets and checks the contract.
type recorder struct {
	t       *testing.T
	layout  Layout
	encode  bool
	size    int64
	mu      sync.Mutex
	buf     []byte
	chunks  []Chunk // Data not kept
	covered int64
	next    int64 // Ordered: the next expected offset
	inWrite atomic.Int32
	encoded atomic.Int64
	commits int
	aborts  int
	failAt  int64 // Write fails for the chunk that covers this offset (when >= 0)
}

func newRecorder(t *testing.T, l Layout) *recorder { return &recorder{t: t, layout: l, failAt: -1} }

func (r *recorder) Begin(size int64) (Layout, error) {
	r.size = size
	if size <= 64<<20 {
		r.buf = make([]byte, size)
	}
	return r.layout, nil
}

func (r *recorder) Write(c *Chunk) error {
	if n := r.inWrite.Add(1); n > 1 && r.layout.Ordered {
		r.t.Errorf("ordered writer: %d concurrent Write calls", n)
	}
	defer r.inWrite.Add(-1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failAt >= 0 && c.Off <= r.failAt && r.failAt < c.Off+c.Len {
		return errFakeWrite
	}
	bs := r.layout.BlockSize
	if bs == 0 {
		bs = 512
	}
	if c.Off%bs != 0 || (c.Off+c.Len != r.size && (c.Off+c.Len)%bs != 0) {
		r.t.Errorf("%v not aligned to the block size %d", c, bs)
	}
	if r.layout.Ordered && c.Off != r.next {
		r.t.Errorf("ordered writer: %v arrives, expected offset %d", c, r.next)
	}
	r.next = c.Off + c.Len
	if !c.Zero() {
		if int64(len(c.Data)) != c.Len {
			r.t.Errorf("%v has %d bytes of data", c, len(c.Data))
		}
		if r.encode {
			if s, ok := c.Encoded.(string); !ok || s != encodedTag(c) {
				r.t.Errorf("%v reaches Write with Encoded %v", c, c.Encoded)
			}
		}
		if r.buf != nil {
			copy(r.buf[c.Off:], c.Data)
		}
	} else if c.Encoded != nil {
		r.t.Errorf("zero %v carries Encoded %v", c, c.Encoded)
	}
	r.chunks = append(r.chunks, Chunk{Off: c.Off, Len: c.Len, Data: c.Data[:0:0]})
	r.covered += c.Len
	return nil
}

func encodedTag(c *Chunk) string { return fmt.Sprintf("enc %d+%d", c.Off, c.Len) }

func (r *recorder) Commit() error { r.commits++; return nil }
func (r *recorder) Abort() error  { r.aborts++; return nil }

// checkCoverage checks that the chunks tile [0, size) exactly once.
func (r *recorder) checkCoverage() {
	cs := slices.Clone(r.chunks)
	slices.SortFunc(cs, func(a, b Chunk) int { return int(a.Off - b.Off) })
	pos := int64(0)
	for _, c := range cs {
		if c.Off != pos {
			r.t.Fatalf("chunks do not tile the disk: %v after offset %d", &c, pos)
		}
		pos += c.Len
	}
	if pos != r.size {
		r.t.Fatalf("chunks end at %d, disk at %d", pos, r.size)
	}
}

type encRecorder struct{ *recorder }

func (e encRecorder) Encode(c *Chunk) error {
	if c.Zero() {
		e.t.Errorf("Encode called on zero %v", c)
	}
	c.Encoded = encodedTag(c)
	e.encoded.Add(1)
	return nil
}

func TestConvertOrderedEncoder(t *testing.T) {
	f := newFake(inspect.KindHole, 100<<10, inspect.KindData, 700<<10, inspect.KindZero, 3<<20,
		inspect.KindData, 5<<20+512, inspect.KindCompressed, 300<<10, inspect.KindHole, 1<<20+512)
	for _, l := range []Layout{{Ordered: true}, {Ordered: true, BlockSize: 64 << 10}, {BlockSize: 1 << 20}, {}} {
		for _, workers := range []int{1, 4} {
			t.Run(fmt.Sprintf("%+v/%d", l, workers), func(t *testing.T) {
				r := newRecorder(t, l)
				r.encode = true
				if err := Convert(context.Background(), f, encRecorder{r}, Options{Workers: workers, ChunkSize: 128 << 10}); err != nil {
					t.Fatal(err)
				}
				r.checkCoverage()
				if !slices.Equal(r.buf, f.want()) {
					t.Fatal("content differs")
				}
				if r.commits != 1 || r.aborts != 0 {
					t.Fatalf("%d commits, %d aborts", r.commits, r.aborts)
				}
				if r.encoded.Load() == 0 {
					t.Fatal("Encode never called")
				}
				for _, c := range r.chunks {
					if !c.Zero() && c.Len > 128<<10 && c.Len > l.BlockSize {
						t.Errorf("data %v longer than the chunk size", &c)
					}
				}
			})
		}
	}
}

// TestConvertSkipsZeros checks that zero and hole runs are never read.
func TestConvertSkipsZeros(t *testing.T) {
	f := newFake(inspect.KindHole, 10<<20, inspect.KindData, 4096, inspect.KindZero, 20<<20, inspect.KindData, 512)
	f.readHook = func(p []byte, off int64) error {
		if e := f.find(off); e.ReadsZero() && off+int64(len(p)) <= e.End() {
			return fmt.Errorf("read of zero run at %d", off)
		}
		return nil
	}
	r := newRecorder(t, Layout{})
	if err := Convert(context.Background(), f, r, Options{}); err != nil {
		t.Fatal(err)
	}
	// Only the data (widened to whole sectors) and, within the same 1 MiB window, the zeros
	// between data may be read.
	if got := f.reads.Load(); got != 4096+512 {
		t.Errorf("%d data bytes read, want %d", got, 4096+512)
	}
	if !slices.Equal(r.buf, f.want()) {
		t.Fatal("content differs")
	}
}

func TestConvertReadError(t *testing.T) {
	f := newFake(inspect.KindData, 3<<20, inspect.KindHole, 1<<20, inspect.KindData, 2<<20)
	f.readHook = func(p []byte, off int64) error {
		if off <= 4<<20+4096 && 4<<20+4096 < off+int64(len(p)) {
			return errFakeRead
		}
		return nil
	}
	for _, ordered := range []bool{false, true} {
		r := newRecorder(t, Layout{Ordered: ordered})
		err := Convert(context.Background(), f, r, Options{})
		if !errors.Is(err, errFakeRead) {
			t.Fatalf("ordered=%v: error %v, want the read error", ordered, err)
		}
		if !strings.Contains(err.Error(), "guest offset") {
			t.Errorf("error %q does not say where", err)
		}
		if r.aborts != 1 || r.commits != 0 {
			t.Fatalf("%d commits, %d aborts", r.commits, r.aborts)
		}
	}
	f.readHook = nil
	f.extentErrAt = 4 << 20
	r := newRecorder(t, Layout{})
	if err := Convert(context.Background(), f, r, Options{}); !errors.Is(err, errFakeExtent) {
		t.Fatalf("error %v, want the extent error", err)
	}
}

func TestConvertWriteError(t *testing.T) {
	f := newFake(inspect.KindData, 3<<20, inspect.KindZero, 1<<20, inspect.KindData, 2<<20)
	for _, l := range []Layout{{}, {Ordered: true}} {
		for _, at := range []int64{0, 3<<20 + 100, 5 << 20} {
			r := newRecorder(t, l)
			r.failAt = at
			err := Convert(context.Background(), f, r, Options{Workers: 3, ChunkSize: 256 << 10})
			if !errors.Is(err, errFakeWrite) {
				t.Fatalf("%+v, fail at %d: error %v", l, at, err)
			}
			if r.aborts != 1 || r.commits != 0 {
				t.Fatalf("%d commits, %d aborts", r.commits, r.aborts)
			}
		}
	}
}

// failingRaw is a RawFile whose Write fails once past an offset.
type failingRaw struct {
	*RawFile
	at int64
}

func (w failingRaw) Write(c *Chunk) error {
	if !c.Zero() && c.Off+c.Len > w.at {
		return errFakeWrite
	}
	return w.RawFile.Write(c)
}

// noOutput checks that nothing but want is left in dir (no output, no temporary file).
func noOutput(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, want) {
		t.Fatalf("directory holds %q, want %q", names, want)
	}
}

func TestRawFileLeavesNothingOnFailure(t *testing.T) {
	f := newFake(inspect.KindData, 3<<20, inspect.KindHole, 1<<20, inspect.KindData, 2<<20)
	t.Run("write error", func(t *testing.T) {
		dir := t.TempDir()
		w, err := CreateRaw(filepath.Join(dir, "out.raw"), RawOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(context.Background(), f, failingRaw{w, 4 << 20}, Options{}); !errors.Is(err, errFakeWrite) {
			t.Fatalf("error %v", err)
		}
		noOutput(t, dir)
	})
	t.Run("read error", func(t *testing.T) {
		dir := t.TempDir()
		g := f.clone()
		g.readHook = func(p []byte, off int64) error {
			if off >= 5<<20 {
				return errFakeRead
			}
			return nil
		}
		w, err := CreateRaw(filepath.Join(dir, "out.raw"), RawOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(context.Background(), g, w, Options{}); !errors.Is(err, errFakeRead) {
			t.Fatalf("error %v", err)
		}
		noOutput(t, dir)
	})
	t.Run("cancel", func(t *testing.T) {
		for _, ordered := range []bool{false, true} {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			g := f.clone()
			var once sync.Once
			g.readHook = func(p []byte, off int64) error {
				if off >= 1<<20 {
					once.Do(cancel)
					<-ctx.Done() // the reader notices only through the pipeline
				}
				return nil
			}
			var w Writer
			rf, err := CreateRaw(filepath.Join(dir, "out.raw"), RawOptions{Sync: true})
			if err != nil {
				t.Fatal(err)
			}
			w = rf
			if ordered {
				w = orderedRaw{rf}
			}
			if err := Convert(ctx, g, w, Options{Workers: 2, ChunkSize: 512 << 10}); !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v, want context.Canceled", err)
			}
			noOutput(t, dir)
		}
	})
	t.Run("existing output kept on failure", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.raw")
		if err := os.WriteFile(out, []byte("old"), 0o640); err != nil {
			t.Fatal(err)
		}
		w, err := CreateRaw(out, RawOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(context.Background(), f, failingRaw{w, 1 << 20}, Options{}); err == nil {
			t.Fatal("no error")
		}
		noOutput(t, dir, "out.raw")
		if b, _ := os.ReadFile(out); string(b) != "old" {
			t.Fatalf("old output changed to %d bytes", len(b))
		}
		// A successful conversion replaces it and keeps its mode.
		convertFile(t, f, out, Options{})
		st, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != f.size || st.Mode().Perm() != 0o640 {
			t.Fatalf("replaced output: size %d mode %v", st.Size(), st.Mode())
		}
		noOutput(t, dir, "out.raw")
	})
}

// orderedRaw makes a RawFile ask for ordered chunks (to test cancellation in the ordered
// path with a real file).
type orderedRaw struct{ *RawFile }

func (o orderedRaw) Begin(size int64) (Layout, error) {
	l, err := o.RawFile.Begin(size)
	l.Ordered = true
	return l, err
}

func TestCreateRawTargets(t *testing.T) {
	dir := t.TempDir()
	if _, err := CreateRaw(dir, RawOptions{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as output: %v", err)
	}
	if _, err := CreateRaw(filepath.Join(dir, "missing", "out.raw"), RawOptions{}); err == nil {
		t.Error("output in a missing directory: no error")
	}
	// A symbolic link is followed: the file it names is replaced, the link stays.
	real := filepath.Join(dir, "real.raw")
	if err := os.WriteFile(real, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink("real.raw", link); err != nil {
		t.Fatal(err)
	}
	f := newFake(inspect.KindData, 4096)
	convertFile(t, f, link, Options{})
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v %v", st, err)
	}
	if b, _ := os.ReadFile(real); !slices.Equal(b, f.want()) {
		t.Fatal("link target does not hold the output")
	}
}

func TestRawStreamDiskFull(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip("/dev/full:", err)
	}
	defer full.Close()
	f := newFake(inspect.KindData, 1<<20, inspect.KindHole, 1<<20)
	err = Convert(context.Background(), f, NewRawStream(full, "-"), Options{})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("error %v, want a clear disk-full error", err)
	}
}

// TestRawFileDiskFull fills a small tmpfs. It needs the right to mount one (root in a
// container, as in CI); elsewhere it is skipped.
func TestRawFileDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v); /dev/full covers the stream writer", err)
	}
	defer syscall.Unmount(dir, 0)
	f := newFake(inspect.KindData, 4<<20)
	w, err := CreateRaw(filepath.Join(dir, "out.raw"), RawOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = Convert(context.Background(), f, w, Options{})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "out.raw") {
		t.Fatalf("error %v, want a clear disk-full error naming the output", err)
	}
	noOutput(t, dir)
}

func TestOptionsValidate(t *testing.T) {
	bad := []Options{
		{Workers: -1}, {Buffers: -2}, {ChunkSize: 1000}, {ChunkSize: MaxChunkSize * 2}, {SparseSize: 100},
		{SparseSize: MaxSparseSize + 512}, {FullyAllocated: true, SparseSize: 4096},
	}
	for _, o := range bad {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
		if err := Convert(context.Background(), newFake(inspect.KindData, 512), newRecorder(t, Layout{}), o); err == nil {
			t.Errorf("Convert with %+v: no error", o)
		}
	}
	if err := (Options{}).Validate(); err != nil {
		t.Errorf("zero Options: %v", err)
	}
	d := Options{Workers: 40}.withDefaults()
	if d.Buffers != DefaultMaxBuffers || d.Workers != DefaultMaxBuffers || d.ChunkSize != DefaultChunkSize || d.SparseSize != DefaultSparseSize {
		t.Errorf("defaults: %+v", d)
	}
	r := newRecorder(t, Layout{BlockSize: 3000})
	if err := Convert(context.Background(), newFake(inspect.KindData, 512), r, Options{}); err == nil || r.aborts != 1 {
		t.Errorf("bad block size: %v, %d aborts", err, r.aborts)
	}
}

// progressSum adds up what the pipeline reports.
type progressSum struct{ n atomic.Int64 }

func (p *progressSum) Add(n int64) { p.n.Add(n) }

func TestConvertProgress(t *testing.T) {
	f := newFake(inspect.KindHole, 3<<30, inspect.KindData, 3<<20, inspect.KindZero, 1<<20+512)
	for _, ordered := range []bool{false, true} {
		var p progressSum
		if err := Convert(context.Background(), f, newRecorder(t, Layout{Ordered: ordered}), Options{Progress: &p}); err != nil {
			t.Fatal(err)
		}
		if p.n.Load() != f.size {
			t.Errorf("ordered=%v: progress adds up to %d, want %d", ordered, p.n.Load(), f.size)
		}
	}
}

func TestConvertEmpty(t *testing.T) {
	for _, l := range []Layout{{}, {Ordered: true}} {
		r := newRecorder(t, l)
		if err := Convert(context.Background(), newFake(), r, Options{}); err != nil {
			t.Fatal(err)
		}
		if len(r.chunks) != 0 || r.commits != 1 {
			t.Errorf("%+v: %d chunks, %d commits", l, len(r.chunks), r.commits)
		}
	}
	if r, err := Compare(context.Background(), newFake(), newFake(), CompareOptions{Strict: true}); err != nil || !r.Identical {
		t.Errorf("Compare of empty disks: %+v, %v", r, err)
	}
}
