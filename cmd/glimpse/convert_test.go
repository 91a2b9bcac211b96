package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// cliFormats are the source formats the CLI tests build; nil means all of cliVariants.
var cliFormats []inspect.Format // every format

// cliSource is an image the CLI tests convert, compare and map.
type cliSource struct {
	name, path string
	format     inspect.Format // -f for glimpse ("" to probe)
	qemuFormat string         // -f for qemu-img
	args       []string       // extra glimpse flags (--allow-backing)
}

// cliVariants are qemu-img convert targets of the CLI tests: one or two per format.
var cliVariants = []struct {
	name   string
	format inspect.Format
	qemu   []string
	flags  []string
}{
	{"qcow2", inspect.QCOW2, []string{"-O", "qcow2"}, nil},
	{"qcow2-zstd", inspect.QCOW2, []string{"-O", "qcow2", "-c", "-o", "compression_type=zstd"}, nil},
	{"vmdk", inspect.VMDK, []string{"-O", "vmdk"}, nil},
	{"vmdk-stream", inspect.VMDK, []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}, nil},
	{"vmdk-flat", inspect.VMDK, []string{"-O", "vmdk", "-o", "subformat=monolithicFlat"}, []string{"--allow-backing"}},
	{"vhd", inspect.VHD, []string{"-O", "vpc"}, nil},
	{"vhdx", inspect.VHDX, []string{"-O", "vhdx"}, nil},
	{"vdi", inspect.VDI, []string{"-O", "vdi"}, nil},
}

const cliSize = 6<<20 + 3*512

// cliBase writes a sparse raw disk with data in a few odd places.
func cliBase(t *testing.T, path string, seed uint64) {
	t.Helper()
	sparseDisk(t, path, cliSize, seed, [][2]int64{{0, 512}, {64<<10 - 1000, 3000}, {1 << 20, 700 << 10}, {4<<20 + 12345, 5000}, {cliSize - 512, 512}})
}

// sparseDisk writes a sparse raw disk of size bytes holding random bytes (from seed) in each
// {offset, length} range and zeros (holes) elsewhere.
func sparseDisk(t *testing.T, path string, size int64, seed uint64, ranges [][2]int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	for _, r := range ranges {
		b := make([]byte, r[1])
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(b, r[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func cliSources(t *testing.T, dir string) []cliSource {
	t.Helper()
	qemutest.Need(t, "qemu-img")
	base := filepath.Join(dir, "base.raw")
	cliBase(t, base, 1)
	out := []cliSource{{name: "raw", path: base, qemuFormat: "raw"}}
	for _, v := range cliVariants {
		if cliFormats != nil && !slices.Contains(cliFormats, v.format) {
			continue
		}
		p := filepath.Join(dir, v.name+"."+strings.ToLower(string(v.format)))
		qemutest.Img(t, append(append([]string{"convert", "-f", "raw"}, v.qemu...), base, p)...)
		out = append(out, cliSource{name: v.name, path: p, args: v.flags})
	}
	return out
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	s, _ := qemutest.FileSHA256(t, p)
	return s
}

func TestConvertCLI(t *testing.T) {
	dir := t.TempDir()
	for _, s := range cliSources(t, dir) {
		t.Run(s.name, func(t *testing.T) {
			want, wantSize := qemutest.ConvertSHA256(t, s.path, s.qemuFormat)
			out := filepath.Join(t.TempDir(), "out.raw")
			for _, flags := range [][]string{nil, {"-O", "raw", "-m", "1"}, {"-S", "64k", "-p"}, {"-S", "0", "-t", "writeback"}} {
				args := append(append(append([]string{"convert"}, s.args...), flags...), s.path, out)
				code, stdout, stderr := runCLI(t, args...)
				if code != 0 || stdout != "" || stderr != "" {
					t.Fatalf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
				}
				if got, n := qemutest.FileSHA256(t, out); got != want || n != wantSize {
					t.Errorf("%v: SHA-256 %s (%d bytes), qemu-img gives %s (%d bytes)", flags, got, n, want, wantSize)
				}
			}
			// Standard output: every byte, in order.
			code, stdout, stderr := runCLI(t, append(append([]string{"convert"}, s.args...), s.path, "-")...)
			sum := sha256.Sum256([]byte(stdout))
			if code != 0 || stderr != "" || hex.EncodeToString(sum[:]) != want || int64(len(stdout)) != wantSize {
				t.Errorf("convert to -: exit %d, stderr %q, %d bytes", code, stderr, len(stdout))
			}
		})
	}
}

func TestConvertCLISparse(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	cliBase(t, base, 2)
	blocks := func(p string) int64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Blocks * 512
	}
	out := filepath.Join(dir, "out.raw")
	if code, _, stderr := runCLI(t, "convert", base, out); code != 0 {
		t.Fatal(stderr)
	}
	if b := blocks(out); b > 1<<20 {
		t.Errorf("default -S: %d bytes allocated for about 720 KiB of data", b)
	}
	if code, _, stderr := runCLI(t, "convert", "-S", "0", base, out); code != 0 {
		t.Fatal(stderr)
	}
	if b := blocks(out); b < cliSize-4096 {
		t.Errorf("-S 0: %d bytes allocated of %d", b, cliSize)
	}
}

func TestConvertCLIErrors(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	cliBase(t, base, 3)
	out := filepath.Join(dir, "out.raw")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"convert", base}, "need SRC and DST"},
		{[]string{"convert", "-O", "ova", base, out}, "--container ova"},
		{[]string{"convert", "-O", "iso", base, out}, "cannot write iso"},
		{[]string{"convert", "-c", base, out}, "cannot be compressed"},
		{[]string{"convert", "-O", "qcow2", "-o", "cluster_size=1000", base, out}, "cluster_size"},
		{[]string{"convert", "-O", "qcow2", "-o", "nosuch=1", base, out}, "nosuch"},
		{[]string{"convert", "-O", "vmdk", base, "-"}, "standard output"},
		{[]string{"convert", "-O", "qcow2", base, "-"}, "standard output"},
		{[]string{"convert", "--container", "zip", base, out}, "--container"},
		{[]string{"convert", "--container", "ova", base, "-"}, "not standard output"},
		{[]string{"convert", "-O", "bogus", base, out}, "unknown format"},
		{[]string{"convert", "-S", "1000", base, out}, "multiples of 512"},
		{[]string{"convert", "-S", "32M", base, out}, "multiples of 512"},
		{[]string{"convert", "-S", "x", base, out}, "-S"},
		{[]string{"convert", "-m", "0", base, out}, "between 1 and 16"},
		{[]string{"convert", "-m", "17", base, out}, "between 1 and 16"},
		{[]string{"convert", "-t", "fast", base, out}, "cache mode"},
		{[]string{"convert", "-f", "qcow2", base, out}, "not a qcow2 image"},
		{[]string{"convert", filepath.Join(dir, "missing"), out}, "no such file"},
		{[]string{"convert", base, base}, "same file"},
		{[]string{"convert", base, dir}, "not a regular file"},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and %q", tc.args[1:], code, stdout, stderr, tc.want)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("failed conversions left files: %v", ents)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "4k": 4096, "4K": 4096, "64KiB": 64 << 10, "1M": 1 << 20, "2G": 2 << 30, "1 MiB": 1 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k", "-1", "1.5M", "9E", "99999999999999999999"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}

// TestProgressBar forces standard error to count as a terminal and checks that -p draws
// a bar that ends at 100%, and that standard output is still refused as a terminal.
func TestProgressBar(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	cliBase(t, base, 4)
	var stderr bytes.Buffer
	old := isTerminalFunc
	defer func() { isTerminalFunc = old }()
	isTerminalFunc = func(w io.Writer) bool { return w == io.Writer(&stderr) }
	var stdout bytes.Buffer
	code := run(t.Context(), []string{"glimpse", "convert", "-p", base, filepath.Join(dir, "out.raw")}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if s := stderr.String(); !strings.Contains(s, "\r[########################] 100%") || !strings.Contains(s, "6.0 MiB / 6.0 MiB") || !strings.HasSuffix(s, "\n") {
		t.Errorf("progress output %q", s)
	}
	// Without -p, nothing.
	stderr.Reset()
	if code := run(t.Context(), []string{"glimpse", "convert", base, filepath.Join(dir, "out.raw")}, strings.NewReader(""), &stdout, &stderr); code != 0 || stderr.Len() != 0 {
		t.Errorf("without -p: exit %d, stderr %q", code, stderr.String())
	}
	// A terminal on standard output gets no disk image.
	isTerminalFunc = func(io.Writer) bool { return true }
	stderr.Reset()
	if code := run(t.Context(), []string{"glimpse", "convert", base, "-"}, strings.NewReader(""), &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "terminal") {
		t.Errorf("stdout on a terminal: exit %d, stderr %q", code, stderr.String())
	}
}

func TestRenderProgress(t *testing.T) {
	got := renderProgress(1<<30, 4<<30, 2e9)
	want := "[######..................]  25%  1.0 GiB / 4.0 GiB  512 MiB/s  ETA 6s"
	if got != want {
		t.Errorf("renderProgress = %q, want %q", got, want)
	}
	if got := renderProgress(0, 0, 0); !strings.Contains(got, "100%") {
		t.Errorf("empty disk: %q", got)
	}
}

// TestConvertCLIInterrupted runs convert with its context already cancelled (as SIGINT
// does): it fails, and leaves neither the output nor a temporary file.
func TestConvertCLIInterrupted(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	cliBase(t, base, 9)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"glimpse", "convert", base, filepath.Join(dir, "out.raw")}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "interrupted") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("interrupted conversion left files: %v", ents)
	}
}
