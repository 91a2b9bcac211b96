package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// q2Check is the part of `qemu-img check --output=json` the tests look at.
type q2Check struct {
	CheckErrors        int   `json:"check-errors"`
	Corruptions        int   `json:"corruptions"`
	Leaks              int   `json:"leaks"`
	AllocatedClusters  int64 `json:"allocated-clusters"`
	TotalClusters      int64 `json:"total-clusters"`
	CompressedClusters int64 `json:"compressed-clusters"`
	ImageEndOffset     int64 `json:"image-end-offset"`
}

func qemuCheck(t testing.TB, path string) q2Check {
	t.Helper()
	out, err := qemutest.Output("qemu-img", "check", "--output=json", "-f", "qcow2", path)
	var c q2Check
	if jerr := json.Unmarshal([]byte(out), &c); jerr != nil {
		t.Fatalf("qemu-img check %s: %v (%v)\n%s", path, jerr, err, out)
	}
	if err != nil || c.CheckErrors != 0 || c.Corruptions != 0 || c.Leaks != 0 {
		human, _ := qemutest.Output("qemu-img", "check", "-f", "qcow2", path)
		t.Fatalf("qemu-img check %s: %+v (%v)\n%s", path, c, err, firstLines(human, 20))
	}
	return c
}

func firstLines(s string, n int) string {
	ls := strings.SplitN(s, "\n", n+1)
	if len(ls) > n {
		ls = ls[:n]
	}
	return strings.Join(ls, "\n")
}

// convertQCOW2 converts img through Create (as the CLI does) into dst.
func convertQCOW2(t testing.TB, img inspect.Image, dst string, kv string, compress bool, opt Options) {
	t.Helper()
	fo := FormatOptions{Options: map[string]string{}, Compress: compress}
	if err := ParseOptionList(kv, fo.Options); err != nil {
		t.Fatal(err)
	}
	w, err := Create(inspect.QCOW2, dst, nil, fo)
	if err != nil {
		t.Fatalf("Create -o %q: %v", kv, err)
	}
	if err := Convert(context.Background(), img, w, opt); err != nil {
		t.Fatalf("Convert -o %q -c=%v: %v", kv, compress, err)
	}
}

// verifyQCOW2 checks an output against the oracle: qemu-img info, check and compare, and
// glimpse's own reader (probe, check, safety, guest SHA-256).
func verifyQCOW2(t testing.TB, out, src, srcFormat, wantSHA string, wantSize int64) q2Check {
	t.Helper()
	info := qemutest.Info(t, out, "")
	if info.Format != "qcow2" || info.VirtualSize != wantSize {
		t.Fatalf("qemu-img info: format %s, virtual size %d; want qcow2, %d", info.Format, info.VirtualSize, wantSize)
	}
	c := qemuCheck(t, out)
	args := []string{"compare", "-q", "-F", "qcow2"}
	if srcFormat != "" {
		args = append(args, "-f", srcFormat)
	}
	if _, err := qemutest.Output("qemu-img", append(args, src, out)...); err != nil {
		t.Fatalf("qemu-img compare %s %s: %v", src, out, err)
	}
	img, err := inspect.OpenFile(out, inspect.OpenOptions{})
	if err != nil {
		t.Fatalf("glimpse opens the output: %v", err)
	}
	defer img.Close()
	if f := img.Info().Format; f != inspect.QCOW2 {
		t.Fatalf("glimpse probes %s", f)
	}
	if r := img.Check(); !r.Clean() {
		t.Fatalf("glimpse check: %+v", r)
	}
	if s := img.Safety(); len(s) != 0 {
		t.Fatalf("glimpse safety findings: %v", s)
	}
	if got, n := streamSHA256(t, img, Options{}); got != wantSHA || n != wantSize {
		t.Fatalf("glimpse reads SHA-256 %s (%d bytes), want %s (%d)", got, n, wantSHA, wantSize)
	}
	return c
}

// q2Info is qemu-img info's qcow2-specific part.
type q2Info struct {
	Type string `json:"type"`
	Data struct {
		Compat          string `json:"compat"`
		CompressionType string `json:"compression-type"`
		LazyRefcounts   bool   `json:"lazy-refcounts"`
		RefcountBits    int    `json:"refcount-bits"`
		Corrupt         bool   `json:"corrupt"`
		ExtendedL2      bool   `json:"extended-l2"`
	} `json:"data"`
}

// dataRanges reduces a map to its merged runs of stored data, whatever their offsets,
// so that two images with different layouts can be compared.
func dataRanges(es []MapEntry) [][2]int64 {
	var out [][2]int64
	for _, e := range es {
		if !e.Data {
			continue
		}
		if n := len(out); n > 0 && out[n-1][1] == e.Start {
			out[n-1][1] += e.Length
			continue
		}
		out = append(out, [2]int64{e.Start, e.Start + e.Length})
	}
	return out
}

// TestQCOW2WriterMatrix converts every readable source format with the default options.
func TestQCOW2WriterMatrix(t *testing.T) {
	dir := t.TempDir()
	for _, s := range buildSources(t, dir) {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			want, size := reference(t, s)
			img := openSource(t, s)
			out := filepath.Join(t.TempDir(), "out.qcow2")
			convertQCOW2(t, img, out, "", false, Options{})
			ref, refFormat := s.path, s.qemuFormat
			if s.ref != "" {
				ref, refFormat = s.ref, ""
			}
			verifyQCOW2(t, out, ref, refFormat, want, size)
		})
	}
}

// TestQCOW2WriterOptions converts the base image with every cluster size, both versions,
// both compression types and several refcount widths, and checks each output against
// qemu-img's conversion with the same options: same allocated and compressed cluster
// counts, same data ranges in qemu-img map, the header fields qemu-img info reports.
func TestQCOW2WriterOptions(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeBase(t, base)
	want, size := qemutest.FileSHA256(t, base)
	type tc struct {
		kv string
		c  bool
	}
	cases := []tc{
		{"cluster_size=512,compat=0.10", false}, {"cluster_size=512", false}, {"cluster_size=512", true},
		{"cluster_size=512,compression_type=zstd", true},
		{"cluster_size=4096", false}, {"cluster_size=4096", true}, {"cluster_size=4k,compat=v2", true},
		{"compat=0.10", false}, {"compat=0.10", true}, {"", false}, {"", true}, {"compression_type=zstd", true},
		{"cluster_size=2M", false}, {"cluster_size=2M", true}, {"cluster_size=2M,compat=0.10", false},
		{"cluster_size=2M,compression_type=zstd", true},
		{"cluster_size=512,refcount_bits=1", true}, {"cluster_size=512,refcount_bits=2", true},
		{"cluster_size=512,refcount_bits=64", true}, {"refcount_bits=4", true}, {"refcount_bits=32", false},
		{"lazy_refcounts=on", false}, {"compat=v3,compression_type=zstd", false},
		{"extended_l2=on", false}, {"extended_l2=on,cluster_size=2M", false}, {"extended_l2=on,cluster_size=16k", false},
		{"extended_l2=on", true}, {"extended_l2=on,cluster_size=32k,compression_type=zstd", true},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s,c=%v", c.kv, c.c), func(t *testing.T) {
			t.Parallel()
			img, err := inspect.OpenFile(base, inspect.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			tmp := t.TempDir()
			out := filepath.Join(tmp, "out.qcow2")
			convertQCOW2(t, img, out, c.kv, c.c, Options{})
			got := verifyQCOW2(t, out, base, "raw", want, size)
			qref := filepath.Join(tmp, "qemu.qcow2")
			args := []string{"convert", "-f", "raw", "-O", "qcow2"}
			if c.kv != "" {
				args = append(args, "-o", c.kv)
			}
			if c.c {
				args = append(args, "-c")
			}
			qemutest.Img(t, append(args, base, qref)...)
			exp := qemuCheck(t, qref)
			if got.AllocatedClusters != exp.AllocatedClusters || got.CompressedClusters != exp.CompressedClusters || got.TotalClusters != exp.TotalClusters {
				t.Errorf("qemu-img check: glimpse %+v, qemu-img's own conversion %+v", got, exp)
			}
			if c.c && got.CompressedClusters == 0 {
				t.Errorf("nothing compressed: %+v", got)
			}
			if g, q := dataRanges(qemuMap(t, out, "qcow2")), dataRanges(qemuMap(t, qref, "qcow2")); !slices.Equal(g, q) {
				t.Errorf("qemu-img map data ranges differ:\nglimpse %v\nqemu    %v", g, q)
			}
			gi, qi := qemutest.Info(t, out, "qcow2"), qemutest.Info(t, qref, "qcow2")
			var gs, qs q2Info
			if err := json.Unmarshal(gi.FormatSpecific, &gs); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(qi.FormatSpecific, &qs); err != nil {
				t.Fatal(err)
			}
			if gs != qs || gi.ClusterSize != qi.ClusterSize {
				t.Errorf("qemu-img info: glimpse %+v (cluster %d), qemu-img's conversion %+v (cluster %d)", gs, gi.ClusterSize, qs, qi.ClusterSize)
			}
			// The header and its extensions are byte for byte qemu's, up to the fields
			// that point into the file.
			gh, qh := q2HeaderBytes(t, out), q2HeaderBytes(t, qref)
			if !bytes.Equal(gh, qh) {
				t.Errorf("header differs from qemu-img's:\nglimpse %x\nqemu    %x", gh, qh)
			}
		})
	}
}

// q2HeaderBytes returns the first 4 KiB of an image with the offsets and sizes of the
// tables (which depend on the layout) cleared.
func q2HeaderBytes(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = b[:min(len(b), 512)]
	clear(b[40:48]) // l1_table_offset
	clear(b[48:60]) // refcount_table_offset, refcount_table_clusters
	return b
}

// TestQCOW2WriterDeterministic converts the same input with different worker counts and
// chunk sizes: the bytes must not change.
func TestQCOW2WriterDeterministic(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeBase(t, base)
	img, err := inspect.OpenFile(base, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, c := range []struct {
		kv string
		c  bool
	}{{"", false}, {"", true}, {"compression_type=zstd", true}, {"cluster_size=512", true}} {
		var first string
		for i, opt := range []Options{{}, {Workers: 1}, {Workers: 7, ChunkSize: 64 << 10, Buffers: 9}, {Workers: 3, ChunkSize: 4 << 20}} {
			out := filepath.Join(dir, fmt.Sprintf("out%d.qcow2", i))
			convertQCOW2(t, img, out, c.kv, c.c, opt)
			sum := mustSHA(t, out)
			if i == 0 {
				first = sum
			} else if sum != first {
				t.Errorf("-o %q -c=%v: %+v gives different bytes", c.kv, c.c, opt)
			}
		}
	}
}

// TestQCOW2WriterEmpty converts an empty 1 TiB disk (instantly, into a tiny file), a
// zero-length disk and a disk whose size is not a multiple of 512 bytes.
func TestQCOW2WriterEmpty(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	for _, c := range []struct {
		name     string
		img      *fakeImage
		want     int64 // virtual size
		maxBytes int64
		kv       string
	}{
		{"1TiB", newFake(inspect.KindHole, 1<<40), 1 << 40, 512 << 10, ""},
		{"1TiB-c", newFake(inspect.KindHole, 1<<40), 1 << 40, 512 << 10, ""},
		{"zero-length", &fakeImage{}, 0, 256 << 10, ""},
		{"1000-bytes", newFake(inspect.KindData, 1000), 1024, 512 << 10, ""},
		{"tail-data", newFake(inspect.KindHole, 3<<30, inspect.KindData, 1000), 3<<30 + 1024, 512 << 10, ""},
		// An L1 table of 256 KiB (written in pieces) with data at both ends.
		{"512-byte-clusters", newFake(inspect.KindData, 3000, inspect.KindHole, 1<<30, inspect.KindData, 3000), 1<<30 + 6144, 1 << 20, "cluster_size=512"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(dir, c.name+".qcow2")
			start := time.Now()
			convertQCOW2(t, c.img, out, c.kv, strings.HasSuffix(c.name, "-c"), Options{})
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() > c.maxBytes {
				t.Errorf("%d bytes, want at most %d", st.Size(), c.maxBytes)
			}
			if info := qemutest.Info(t, out, ""); info.Format != "qcow2" || info.VirtualSize != c.want {
				t.Fatalf("qemu-img info: %s, %d bytes", info.Format, info.VirtualSize)
			}
			qemuCheck(t, out)
			g, err := inspect.OpenFile(out, inspect.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			if r := g.Check(); !r.Clean() || len(g.Safety()) != 0 {
				t.Fatalf("glimpse check %+v, safety %v", r, g.Safety())
			}
			// The guest data at both ends (the middle is a hole in every case).
			for _, off := range []int64{0, max(0, c.want-64<<10)} {
				n := min(64<<10, c.want-off)
				wantData, gotData := make([]byte, n), make([]byte, n)
				c.img.ReadAt(wantData, off) // zeros past the fake's end: the rounded-up sector
				if _, err := g.ReadAt(gotData, off); err != nil && n > 0 {
					t.Fatal(err)
				}
				if !bytes.Equal(gotData, wantData) {
					t.Fatalf("guest data at %d differs", off)
				}
			}
		})
	}
}

// TestQCOW2WriterRandom converts random layouts (holes, zero runs, random and
// compressible data at odd offsets and sizes) with random options and checks them with
// qemu-img and glimpse: it exercises the packing of compressed clusters, refcount blocks
// that fill up mid-chunk, narrow refcounts and L2 tables of small clusters.
func TestQCOW2WriterRandom(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	rounds := 14
	if testing.Short() {
		rounds = 4
	}
	for seed := range rounds {
		rng := rand.New(rand.NewPCG(uint64(seed), 99))
		dir := t.TempDir()
		raw := filepath.Join(dir, "src.raw")
		size := q2RandomRaw(t, rng, raw)
		clusters := []string{"512", "1k", "4k", "16k", "64k", "2M"}
		cl := rng.IntN(len(clusters))
		kv := "cluster_size=" + clusters[cl]
		compress := rng.IntN(3) > 0
		if rng.IntN(4) == 0 {
			kv += ",compat=0.10"
		} else {
			if cl >= 3 && rng.IntN(2) == 0 {
				kv += ",extended_l2=on"
				compress = rng.IntN(3) == 0 // mostly subclusters
			}
			kv += ",refcount_bits=" + strconv.Itoa(1<<rng.IntN(7))
			if rng.IntN(2) == 0 {
				kv += ",compression_type=zstd"
			}
		}
		opt := Options{Workers: 1 + rng.IntN(4), ChunkSize: int64(64<<10) << rng.IntN(5)}
		t.Run(fmt.Sprintf("%d:%s,c=%v,size=%d", seed, kv, compress, size), func(t *testing.T) {
			t.Parallel()
			img, err := inspect.OpenFile(raw, inspect.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			want, n := qemutest.ConvertSHA256(t, raw, "raw")
			out := filepath.Join(dir, "out.qcow2")
			convertQCOW2(t, img, out, kv, compress, opt)
			verifyQCOW2(t, out, raw, "raw", want, n)
		})
	}
}

// q2RandomRaw writes a raw image of random layout and returns its size.
func q2RandomRaw(t testing.TB, rng *rand.Rand, path string) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(512 * (1 + rng.IntN(12<<11))) // up to 12 MiB
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	text := []byte(strings.Repeat("qcow2 packs compressed clusters byte by byte; ", 4096))
	for range 1 + rng.IntN(40) {
		off := rng.Int64N(size)
		n := min(1+rng.Int64N(int64(1)<<(9+rng.IntN(12))), size-off)
		b := make([]byte, n)
		switch rng.IntN(3) {
		case 0: // incompressible
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
		case 1: // compressible
			for i := range b {
				b[i] = text[(int(off)+i)%len(text)]
			}
		default: // a run of one byte
			v := byte(rng.IntN(256))
			for i := range b {
				b[i] = v
			}
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return size
}

func TestQCOW2WriterOptionErrors(t *testing.T) {
	for _, c := range []struct{ kv, want string }{
		{"compat=1.0", "compat=1.0"},
		{"cluster_size=1000", "power of two between 512 and 2048k"},
		{"cluster_size=4M", "power of two between 512 and 2048k"},
		{"cluster_size=256", "power of two"},
		{"cluster_size=64q", "power of two"},
		{"compression_type=lz4", "zlib or zstd"},
		{"refcount_bits=3", "power of two"},
		{"refcount_bits=128", "may not exceed 64"},
		{"refcount_bits=8,compat=0.10", "require compat=1.1"},
		{"lazy_refcounts=on,compat=v2", "require compat=1.1"},
		{"compression_type=zstd,compat=0.10", "requires compat=1.1"},
		{"lazy_refcounts=maybe", "on or off"},
		{"preallocation=metadata", "preallocation=off only"},
		{"preallocation=full", "preallocation=off only"},
		{"preallocation=sparse", "want off"},
		{"encryption=on", "encrypted"},
		{"encrypt.format=luks", "encrypted"},
		{"encrypt.key-secret=sec0", "encrypted"},
		{"backing_file=base.qcow2", "without a backing file"},
		{"backing_fmt=raw", "without a backing file"},
		{"data_file=x.raw", "external data file"},
		{"data_file_raw=on", "external data file"},
		{"extended_l2=on,cluster_size=4k", "at least 16k"},
		{"extended_l2=on,compat=0.10", "requires compat=1.1"},
		{"size=1G", "virtual size is the source's"},
		{"subformat=dynamic", "does not know the option(s) subformat (it knows: backing_file"},
	} {
		fo := FormatOptions{Options: map[string]string{}}
		if err := ParseOptionList(c.kv, fo.Options); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		_, err := Create(inspect.QCOW2, filepath.Join(dir, "out.qcow2"), nil, fo)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("-o %s: error %v, want one that says %q", c.kv, err, c.want)
		}
		noOutput(t, dir)
	}
	// What qemu accepts is accepted.
	for _, kv := range []string{"compat=v2", "compat=v3", "compat=0.10", "compat=1.1", "cluster_size=64k", "cluster_size=0.5k",
		"cluster_size=2M", "cluster_size=512b", "lazy_refcounts=yes", "lazy_refcounts=off", "preallocation=off", "encryption=off",
		"extended_l2=off", "data_file_raw=off", "refcount_bits=64", "compression_type=zlib,compat=0.10"} {
		fo := FormatOptions{Options: map[string]string{}}
		if err := ParseOptionList(kv, fo.Options); err != nil {
			t.Fatal(err)
		}
		if _, err := parseQCOW2Options(fo); err != nil {
			t.Errorf("-o %s: %v", kv, err)
		}
	}
	if _, err := Create(inspect.QCOW2, "-", io.Discard, FormatOptions{}); err == nil || !strings.Contains(err.Error(), "standard output") {
		t.Errorf("standard output: %v", err)
	}
}

func TestQCOW2ParseQemuSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "64k": 65536, "64K": 65536, "2M": 2 << 20, "2m": 2 << 20, "1G": 1 << 30,
		"0.5k": 512, "1.5M": 3 << 19, "100b": 100, "1T": 1 << 40} {
		if got, err := parseQemuSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k", "-1", "0x100", "1.3b", "1e3", "99999999999E", "1 k", "+5"} {
		if got, err := parseQemuSize(in); err == nil {
			t.Errorf("%q: %d, want an error", in, got)
		}
	}
}

func TestQCOW2RefcountEntries(t *testing.T) {
	for _, bits := range []uint{1, 2, 4, 8, 16, 32, 64} {
		blk := make([]byte, 64)
		n := int64(len(blk)) * 8 / int64(bits)
		maxv := uint64(1)<<bits - 1
		if bits == 64 {
			maxv = 1<<64 - 1
		}
		for e := range n {
			q2RefSet(blk, e, bits, uint64(e*7+3)&maxv)
		}
		for e := range n {
			if got := q2RefGet(blk, e, bits); got != uint64(e*7+3)&maxv {
				t.Fatalf("%d bits, entry %d: %d", bits, e, got)
			}
		}
	}
	// Sub-byte entries start at the least significant bit (qemu's layout).
	blk := make([]byte, 1)
	q2RefSet(blk, 0, 1, 1)
	q2RefSet(blk, 1, 2, 3)
	if blk[0] != 0b1101 {
		t.Fatalf("packed %08b", blk[0])
	}
}

// q2FailingFile fails every write that ends past limit, or the header's (a full disk).
type q2FailingFile struct {
	f      io.WriterAt
	limit  int64
	header bool
}

func (w q2FailingFile) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > w.limit || w.header && off == 0 {
		return 0, syscall.ENOSPC
	}
	return w.f.WriteAt(p, off)
}

// TestQCOW2WriterFailures checks that write errors (in the data, in the tables written at
// Commit), read errors and cancellation surface and leave nothing under the output name,
// and that an existing output is kept until a conversion succeeds.
func TestQCOW2WriterFailures(t *testing.T) {
	src := newFake(inspect.KindData, 3<<20, inspect.KindHole, 1<<20, inspect.KindData, 2<<20)
	create := func(t *testing.T, dir, kv string, c bool) *qcow2Writer {
		fo := FormatOptions{Options: map[string]string{}, Compress: c}
		if err := ParseOptionList(kv, fo.Options); err != nil {
			t.Fatal(err)
		}
		w, err := Create(inspect.QCOW2, filepath.Join(dir, "out.qcow2"), nil, fo)
		if err != nil {
			t.Fatal(err)
		}
		return w.(*qcow2Writer)
	}
	for _, c := range []bool{false, true} {
		// A full disk anywhere: in the first data, in the middle, in the tables written
		// at Commit (the refcount table is the file's last cluster), in the header.
		dir := t.TempDir()
		if err := Convert(context.Background(), src, create(t, dir, "", c), Options{}); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(filepath.Join(dir, "out.qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []q2FailingFile{{limit: 1}, {limit: 64 << 10}, {limit: st.Size() / 2}, {limit: st.Size() - 1}, {limit: 1 << 40, header: true}} {
			t.Run(fmt.Sprintf("disk full %+v c=%v", f, c), func(t *testing.T) {
				dir := t.TempDir()
				w := create(t, dir, "", c)
				f.f = w.out.f
				w.out.wa = f
				err := Convert(context.Background(), src, w, Options{})
				if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "out.qcow2") {
					t.Fatalf("error %v, want a disk-full error naming the output", err)
				}
				noOutput(t, dir)
			})
		}
	}
	t.Run("read error", func(t *testing.T) {
		dir := t.TempDir()
		g := src.clone()
		g.readHook = func(p []byte, off int64) error {
			if off >= 5<<20 {
				return errFakeRead
			}
			return nil
		}
		if err := Convert(context.Background(), g, create(t, dir, "", true), Options{}); !errors.Is(err, errFakeRead) {
			t.Fatalf("error %v", err)
		}
		noOutput(t, dir)
	})
	t.Run("cancel", func(t *testing.T) {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		g := src.clone()
		var once sync.Once
		g.readHook = func(p []byte, off int64) error {
			if off >= 1<<20 {
				once.Do(cancel)
				<-ctx.Done()
			}
			return nil
		}
		if err := Convert(ctx, g, create(t, dir, "", false), Options{Workers: 2, ChunkSize: 256 << 10}); !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v", err)
		}
		noOutput(t, dir)
	})
	t.Run("abort twice and after commit", func(t *testing.T) {
		dir := t.TempDir()
		w := create(t, dir, "", false)
		if err := errors.Join(w.Abort(), w.Abort()); err != nil {
			t.Fatal(err)
		}
		noOutput(t, dir)
		w = create(t, dir, "", false)
		if err := Convert(context.Background(), src, w, Options{}); err != nil {
			t.Fatal(err)
		}
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		noOutput(t, dir, "out.qcow2")
	})
	t.Run("existing output", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.qcow2")
		if err := os.WriteFile(out, []byte("old"), 0o640); err != nil {
			t.Fatal(err)
		}
		w := create(t, dir, "", false)
		w.out.wa = q2FailingFile{f: w.out.f, limit: 1 << 20}
		if err := Convert(context.Background(), src, w, Options{}); err == nil {
			t.Fatal("no error")
		}
		if b, _ := os.ReadFile(out); string(b) != "old" {
			t.Fatalf("old output changed to %d bytes", len(b))
		}
		if err := Convert(context.Background(), src, create(t, dir, "", false), Options{}); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(out)
		if err != nil || st.Mode().Perm() != 0o640 {
			t.Fatalf("replaced output: %v %v", st, err)
		}
		noOutput(t, dir, "out.qcow2")
		if err := os.Mkdir(filepath.Join(dir, "d.qcow2"), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := Create(inspect.QCOW2, filepath.Join(dir, "d.qcow2"), nil, FormatOptions{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("directory as output: %v", err)
		}
	})
}

// TestQCOW2WriterDiskFull fills a small tmpfs (root in a container, as in CI; skipped
// where it cannot be mounted: the failing WriterAt above covers the logic).
func TestQCOW2WriterDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v)", err)
	}
	defer syscall.Unmount(dir, 0)
	raw := filepath.Join(t.TempDir(), "random.raw")
	b := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(raw, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := inspect.OpenFile(raw, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []bool{false, true} {
		w, err := Create(inspect.QCOW2, filepath.Join(dir, "out.qcow2"), nil, FormatOptions{Compress: c})
		if err != nil {
			t.Fatal(err)
		}
		err = Convert(context.Background(), f, w, Options{})
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "out.qcow2") {
			t.Fatalf("-c=%v: error %v, want a disk-full error naming the output", c, err)
		}
		noOutput(t, dir)
	}
}

// FuzzQCOW2Options feeds arbitrary -o strings to the option parser: it must never panic,
// and whatever it accepts must be a configuration qemu accepts too.
func FuzzQCOW2Options(f *testing.F) {
	for _, s := range []string{"", "compat=0.10", "cluster_size=2M,compression_type=zstd", "cluster_size=1.5k", "refcount_bits=64,lazy_refcounts=on",
		"preallocation=off,encryption=off", "cluster_size=99999999999999999999E", "cluster_size=0.0000001k", "compat=v2,,x=y", "size=1G"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, kv string, compress bool) {
		fo := FormatOptions{Options: map[string]string{}, Compress: compress}
		if ParseOptionList(kv, fo.Options) != nil {
			return
		}
		cfg, err := parseQCOW2Options(fo)
		if err != nil {
			return
		}
		if cfg.clusterBits < 9 || cfg.clusterBits > 21 || cfg.refcountOrder > 6 || (cfg.version != 2 && cfg.version != 3) ||
			cfg.version == 2 && (cfg.refcountOrder != 4 || cfg.lazy || cfg.zstd) || cfg.compress != compress {
			t.Fatalf("-o %q accepted as %+v", kv, cfg)
		}
	})
}

// BenchmarkWriteQCOW2 converts a generated 256 MiB raw disk (a third compressible text, a
// quarter random, the rest zeros, in 1 MiB regions) to qcow2, plain and compressed.
func BenchmarkWriteQCOW2(b *testing.B) {
	dir := b.TempDir()
	raw := filepath.Join(dir, "bench.raw")
	f, err := os.Create(raw)
	if err != nil {
		b.Fatal(err)
	}
	const size = 256 << 20
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	src := rand.NewChaCha8([32]byte{1})
	rng := rand.New(src)
	text := []byte(strings.Repeat("a line of text that compresses as well as logs and sources do. ", 20000))
	region := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(region)) {
		switch k := rng.IntN(12); {
		case k < 4:
			s := rng.IntN(len(text) - len(region))
			copy(region, text[s:])
		case k < 7:
			src.Read(region)
		default:
			continue
		}
		if _, err := f.WriteAt(region, off); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	img, err := inspect.OpenFile(raw, inspect.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	for _, c := range []struct {
		name string
		kv   string
		c    bool
	}{{"plain", "", false}, {"deflate", "", true}, {"zstd", "compression_type=zstd", true}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(size)
			out := filepath.Join(dir, "out.qcow2")
			for b.Loop() {
				convertQCOW2(b, img, out, c.kv, c.c, Options{})
			}
			st, err := os.Stat(out)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(st.Size())/size, "out/in")
		})
	}
}
