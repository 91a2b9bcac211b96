package convert

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

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

func TestQCOW2WriterSmoke(t *testing.T) {
	dir := t.TempDir()
	srcs := buildSources(t, dir, inspect.Raw)
	s := srcs[0]
	want, size := reference(t, s)
	img := openSource(t, s)
	for _, tc := range []struct {
		kv string
		c  bool
	}{{"", false}, {"compat=0.10", false}, {"cluster_size=512", false}, {"cluster_size=2M", false}, {"", true}, {"compression_type=zstd", true}} {
		out := filepath.Join(t.TempDir(), "out.qcow2")
		convertQCOW2(t, img, out, tc.kv, tc.c, Options{})
		c := verifyQCOW2(t, out, s.path, "raw", want, size)
		t.Logf("%q -c=%v: %+v", tc.kv, tc.c, c)
	}
}
