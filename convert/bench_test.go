package convert

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"glimpse/inspect"
)

// memImage is a fast in-memory source for the pipeline benchmarks: data extents read a
// repeating 1 MiB block of random bytes (with a zero 4 KiB block in it), holes read zeros.
type memImage struct {
	fakeImage
	block []byte
}

func newMemImage(dataMiB, holeMiB, runs int) *memImage {
	var spec []any
	for range runs {
		spec = append(spec, inspect.KindData, dataMiB<<20, inspect.KindHole, holeMiB<<20)
	}
	m := &memImage{fakeImage: *newFake(spec...), block: make([]byte, 1<<20)}
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range m.block {
		m.block[i] = byte(rng.Uint32())
	}
	clear(m.block[64<<10 : 68<<10])
	return m
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= m.size {
		return 0, io.EOF
	}
	var tail error
	if int64(len(p)) > m.size-off {
		p, tail = p[:m.size-off], io.EOF
	}
	for i := 0; i < len(p); {
		pos := off + int64(i)
		e := m.find(pos)
		n := int(min(int64(len(p)-i), e.End()-pos))
		if e.ReadsZero() {
			clear(p[i : i+n])
		} else {
			for k := 0; k < n; {
				b := int(pos+int64(k)) % len(m.block)
				k += copy(p[i+k:i+n], m.block[b:])
			}
		}
		i += n
	}
	return len(p), tail
}

// discard is a positional Writer that drops everything.
type discard struct{ ordered bool }

func (d discard) Begin(int64) (Layout, error) { return Layout{Ordered: d.ordered}, nil }
func (discard) Write(*Chunk) error            { return nil }
func (discard) Commit() error                 { return nil }
func (discard) Abort() error                  { return nil }

// BenchmarkPipeline measures the pipeline alone (in-memory source, no output): the cost
// of the extent walk, the zero check and the hand-offs, per guest byte of data.
func BenchmarkPipeline(b *testing.B) {
	img := newMemImage(60, 4, 4) // 240 MiB of data, 16 MiB of holes
	for _, ordered := range []bool{false, true} {
		name := "positional"
		if ordered {
			name = "ordered"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(240 << 20)
			for b.Loop() {
				if err := Convert(context.Background(), img, discard{ordered}, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRawFile converts the in-memory source to a sparse file on disk.
func BenchmarkRawFile(b *testing.B) {
	img := newMemImage(60, 4, 2)
	out := filepath.Join(b.TempDir(), "out.raw")
	b.SetBytes(120 << 20)
	for b.Loop() {
		w, err := CreateRaw(out, RawOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := Convert(context.Background(), img, w, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawStream converts the in-memory source to a stream (zeros written out).
func BenchmarkRawStream(b *testing.B) {
	img := newMemImage(60, 4, 2)
	b.SetBytes(img.size)
	for b.Loop() {
		if err := Convert(context.Background(), img, NewRawStream(io.Discard, "-"), Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIsZero(b *testing.B) {
	p := make([]byte, 1<<20)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if !isZero(p) {
			b.Fatal("not zero")
		}
	}
}

// BenchmarkConvertFile converts the image named by $GLIMPSE_BENCH_SRC (one of make bench's
// sources) into a discarding writer, so that a reader can be profiled alone:
//
//	GLIMPSE_BENCH_SRC=/var/tmp/glimpse-bench/disk-zlib.qcow2 \
//	  go test -run '^$' -bench ConvertFile -benchtime 1x -cpuprofile cpu.out ./convert
func BenchmarkConvertFile(b *testing.B) {
	src := os.Getenv("GLIMPSE_BENCH_SRC")
	if src == "" {
		b.Skip("set GLIMPSE_BENCH_SRC to an image")
	}
	img, err := inspect.OpenFile(src, inspect.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	workers, _ := strconv.Atoi(os.Getenv("GLIMPSE_BENCH_WORKERS"))
	b.SetBytes(img.Size())
	for b.Loop() {
		if err := Convert(context.Background(), img, discard{}, Options{Workers: workers}); err != nil {
			b.Fatal(err)
		}
	}
}
