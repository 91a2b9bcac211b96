package inspect

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"testing"

	"glimpse/internal/qemutest"
)

// validate checks the invariants every Image must keep (the conformance test every format's
// tests call): extents tile [0, Size) without gaps or overlaps, zero extents read as zeros,
// reads at and past the end behave like io.ReaderAt, and Close may be called twice.
func validate(t *testing.T, img Image) {
	t.Helper()
	size := img.Size()
	if size < 0 {
		t.Fatalf("negative size %d", size)
	}
	var pos int64
	buf := make([]byte, 64<<10)
	for n := 0; pos < size; n++ {
		if n > 1<<20 {
			t.Fatalf("more than 1M extents; stopped at %d", pos)
		}
		e, err := img.Extent(pos, 0)
		if err != nil {
			t.Fatalf("Extent(%d): %v", pos, err)
		}
		if e.Start != pos || e.Length <= 0 || e.End() > size {
			t.Fatalf("Extent(%d) = %+v: does not tile [0,%d)", pos, e, size)
		}
		if e.ReadsZero() {
			// sample the start and the end of the extent
			for _, off := range []int64{e.Start, max(e.Start, e.End()-int64(len(buf)))} {
				p := buf[:min(int64(len(buf)), e.End()-off)]
				if _, err := img.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && off+int64(len(p)) == size) {
					t.Fatalf("ReadAt(%d, %d) in zero extent: %v", off, len(p), err)
				}
				if !isZero(p) {
					t.Fatalf("extent %+v is %v but offset %d reads non-zero bytes", e, e.Kind, off)
				}
			}
		}
		pos = e.End()
	}
	// Reads at and past the end.
	if n, err := img.ReadAt(buf[:1], size); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at size: n=%d err=%v, want 0, io.EOF", n, err)
	}
	if size > 0 {
		n, err := img.ReadAt(buf[:16], size-1)
		if n != 1 || err != io.EOF {
			t.Fatalf("ReadAt straddling the end: n=%d err=%v, want 1, io.EOF", n, err)
		}
	}
	if _, err := img.ReadAt(buf[:1], -1); err == nil {
		t.Fatal("ReadAt(-1) succeeded")
	}
	_ = img.Info()
	_ = img.Safety()
}

// guestSHA256 hashes the whole guest disk of img, reading only data extents (zeros are
// hashed without reading).
func guestSHA256(t testing.TB, img Image) string {
	t.Helper()
	h := sha256.New()
	size := img.Size()
	buf := make([]byte, 1<<20)
	zeros := make([]byte, 1<<20)
	for pos := int64(0); pos < size; {
		e, err := img.Extent(pos, 0)
		if err != nil {
			t.Fatalf("Extent(%d): %v", pos, err)
		}
		for off := e.Start; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if e.ReadsZero() {
				h.Write(zeros[:n])
			} else {
				if _, err := img.ReadAt(buf[:n], off); err != nil && !(errors.Is(err, io.EOF) && off+n == size) {
					t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
				}
				h.Write(buf[:n])
			}
			off += n
		}
		pos = e.End()
	}
	return hex.EncodeToString(h.Sum(nil))
}

// openT opens a file for a test and closes it when the test ends.
func openT(t testing.TB, path string, opt OpenOptions) Image {
	t.Helper()
	img, err := OpenFile(path, opt)
	if err != nil {
		t.Fatalf("OpenFile(%s): %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// hasFinding reports whether findings include code.
func hasFinding(fs []Finding, code string) bool {
	for _, f := range fs {
		if f.Code == code {
			return true
		}
	}
	return false
}

// compareWithQemu checks glimpse's Info against `qemu-img info` on format, virtual size and
// backing file. qemuFormat is the -f to give qemu-img ("" to let it probe, "vpc" for vhd).
func compareWithQemu(t *testing.T, path, qemuFormat string, info Info) {
	t.Helper()
	q := qemutest.Info(t, path, qemuFormat)
	want := q.Format
	if want == "vpc" {
		want = "vhd"
	}
	if string(info.Format) != want {
		t.Errorf("%s: format %s, qemu-img says %s", path, info.Format, want)
	}
	if info.VirtualSize != q.VirtualSize {
		t.Errorf("%s: virtual size %d, qemu-img says %d", path, info.VirtualSize, q.VirtualSize)
	}
	if info.BackingFilename != q.BackingFilename {
		t.Errorf("%s: backing file %q, qemu-img says %q", path, info.BackingFilename, q.BackingFilename)
	}
}

// compareGuestWithQemu checks that glimpse reads the same guest bytes as
// `qemu-img convert -O raw`.
func compareGuestWithQemu(t *testing.T, path, qemuFormat string, img Image) {
	t.Helper()
	want, wantSize := qemutest.ConvertSHA256(t, path, qemuFormat)
	if img.Size() != wantSize {
		t.Fatalf("%s: size %d, qemu-img converts %d bytes", path, img.Size(), wantSize)
	}
	if got := guestSHA256(t, img); got != want {
		t.Fatalf("%s: guest SHA-256 %s, qemu-img gives %s", path, got, want)
	}
}

// fuzzOpen is the body every format's fuzz target shares: whatever the bytes, Open, Info,
// Safety, Check and bounded guest reads must return (an error is fine) without panicking,
// hanging, or allocating without bound.
func fuzzOpen(t *testing.T, data []byte, format Format) {
	img, err := Open(bytes.NewReader(data), int64(len(data)), OpenOptions{Name: "fuzz", Format: format})
	if err != nil {
		if err.Error() == "" {
			t.Fatal("empty error message")
		}
		return
	}
	defer img.Close()
	_ = img.Info()
	_ = img.Safety()
	_ = img.Check()
	size := img.Size()
	buf := make([]byte, 64<<10)
	var pos int64
	read := 0
	for steps := 0; pos < size && steps < 4096 && read < 8<<20; steps++ {
		e, err := img.Extent(pos, 0)
		if err != nil {
			return
		}
		if e.Start != pos || e.Length <= 0 || e.End() > size {
			t.Fatalf("Extent(%d) = %+v does not tile [0,%d)", pos, e, size)
		}
		n := min(int64(len(buf)), e.Length)
		got, err := img.ReadAt(buf[:n], pos)
		if err == nil && e.ReadsZero() && !isZero(buf[:got]) {
			t.Fatalf("zero extent %+v reads non-zero", e)
		}
		read += got
		pos = e.End()
	}
}

// fuzzSeeds adds files as seeds: the repository's testdata for this format and the
// third-party samples (when ../shared is present). Large samples are cut to their first
// 1 MiB, which holds every header.
func fuzzSeeds(f *testing.F, paths ...string) {
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(data) > 1<<20 {
			data = data[:1<<20]
		}
		f.Add(data)
	}
}

// fixture is one image a format's tests build (with qemu-img, tar, genisoimage, or by hand).
// Every format test file provides `<format>Fixtures(t testing.TB, dir string) []fixture`;
// the cross-format tests (stream versus file, CLI versus qemu-img) run them all.
type fixture struct {
	name       string
	path       string
	qemuFormat string   // -f for qemu-img: "" to probe, "vpc" for vhd, "-" when qemu-img cannot open it
	format     Format   // what glimpse must report
	findings   []string // finding codes glimpse must report (and no others)
	readable   bool     // glimpse reads its guest data without AllowBacking
}

// thirdPartySeed adds a third-party sample as a fuzz seed when ../shared is present.
func thirdPartySeed(f *testing.F, rels ...string) {
	if qemutest.SharedDirOrEmpty() == "" {
		return
	}
	for _, rel := range rels {
		fuzzSeeds(f, qemutest.ThirdParty(f, rel))
	}
}
