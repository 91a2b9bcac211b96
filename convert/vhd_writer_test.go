package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// Shared helpers of the vhd, vhdx and vdi writer tests (prefix vx), then the vhd tests.

// vxFixedUUID and vxFixedTime make outputs reproducible in the tests.
const (
	vxFixedUUID = "6c696d70-7365-4000-8000-676c696d7073"
	vxFixedTime = "1700000000"
)

// vxQemuName is qemu-img's name of a format.
func vxQemuName(f inspect.Format) string {
	if f == inspect.VHD {
		return "vpc"
	}
	return string(f)
}

// vxConvert converts img into out through Create (as the CLI does) with the -o options kv
// ("key", "value", …); the UUID and time stamp are fixed unless kv sets them. It is safe
// in any goroutine.
func vxConvert(format inspect.Format, img inspect.Image, out string, copt Options, kv ...string) error {
	opts := map[string]string{"uuid": vxFixedUUID}
	if format == inspect.VHD {
		opts["timestamp"] = vxFixedTime
	}
	for i := 0; i+1 < len(kv); i += 2 {
		opts[kv[i]] = kv[i+1]
	}
	w, err := Create(format, out, nil, FormatOptions{Options: opts})
	if err != nil {
		return fmt.Errorf("Create %s %v: %w", format, kv, err)
	}
	if err := Convert(context.Background(), img, w, copt); err != nil {
		return fmt.Errorf("Convert to %s %v: %w", format, kv, err)
	}
	return nil
}

// vxWant is what an output must be.
type vxWant struct {
	format  inspect.Format
	declare bool  // qemu-img must be told the format (a fixed vhd, which qemu does not probe)
	size    int64 // the virtual size qemu-img and glimpse must report
	// src is compared with the output by qemu-img compare (unless empty); srcFormat is its
	// -f ("" to probe).
	src, srcFormat string
	// sha is the SHA-256 of the first n guest bytes; the rest must read as zeros. Empty
	// sha: for large sparse disks, the 512 bytes at each of spots must read as in srcImg
	// (qemu-img compare covers the rest); without srcImg, the disk must be one zero extent.
	sha    string
	n      int64
	srcImg inspect.Image
	spots  []int64
	// info checks glimpse's format-specific detail.
	info func(any) error
	// glimpseOnly skips qemu-img (a vhdx with 4096-byte logical sectors, which qemu 7.2
	// cannot open).
	glimpseOnly bool
}

// vxCheckOutput checks an output with qemu-img (info, check where the format has one,
// compare) and with glimpse's reader (probe, open, no safety findings, clean check, the
// guest's content). It never stops the test, so that it can run in any goroutine.
func vxCheckOutput(out string, w vxWant) (errs []error) {
	if !w.glimpseOnly {
		errs = vxCheckQemu(out, vxQemuName(w.format), w)
	}
	return append(errs, vxCheckGlimpse(out, w)...)
}

// vxCheckQemu is the qemu-img part of vxCheckOutput.
func vxCheckQemu(out, qf string, w vxWant) (errs []error) {
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(out+": "+format, args...)) }
	args := []string{"info", "--output=json", "-U"}
	if w.declare {
		args = append(args, "-f", qf)
	}
	js, err := qemutest.Output("qemu-img", append(args, out)...)
	var info qemutest.ImgInfo
	if err == nil {
		err = json.Unmarshal([]byte(js), &info)
	}
	switch {
	case err != nil:
		fail("qemu-img info: %v %s", err, js)
	case info.Format != qf || info.VirtualSize != w.size:
		fail("qemu-img info: format %s, virtual size %d; want %s, %d", info.Format, info.VirtualSize, qf, w.size)
	}
	if w.format != inspect.VHD { // qemu has no check for vpc
		if msg, err := qemutest.Output("qemu-img", "check", "-f", qf, out); err != nil || !strings.Contains(msg, "No errors were found") {
			fail("qemu-img check: %s %v", msg, err)
		}
	}
	if w.srcImg != nil {
		// A large sparse disk: qemu-img compare would read all of it (qemu's vhdx driver
		// has no block status), so qemu-io reads the spots that hold data.
		for _, off := range w.spots {
			n := min(512, w.srcImg.Size()-off)
			want := make([]byte, n)
			if _, err := w.srcImg.ReadAt(want, off); err != nil {
				fail("reading the source at %d: %v", off, err)
				continue
			}
			got, err := vxQemuRead(out, qf, off, n)
			if err != nil || !bytes.Equal(got, want) {
				fail("qemu-io reads other bytes at %d: %v", off, err)
			}
		}
	} else if w.src != "" {
		args := []string{"compare", "-F", qf}
		if w.srcFormat != "" {
			args = append(args, "-f", w.srcFormat)
		}
		if msg, err := qemutest.Output("qemu-img", append(args, w.src, out)...); err != nil || !strings.Contains(msg, "Images are identical.") {
			fail("qemu-img compare %s: %s %v", w.src, msg, err)
		}
	}
	return errs
}

// vxQemuRead reads n bytes at off of an image with qemu-io (read -v, a hex dump).
func vxQemuRead(path, format string, off, n int64) ([]byte, error) {
	out, err := qemutest.Output("qemu-io", "-r", "-f", format, "-c", fmt.Sprintf("read -v %d %d", off, n), path)
	if err != nil {
		return nil, fmt.Errorf("qemu-io: %v %s", err, out)
	}
	var b []byte
	for _, line := range strings.Split(out, "\n") {
		addr, rest, ok := strings.Cut(line, ":  ")
		if !ok || len(addr) == 0 || strings.Trim(addr, "0123456789abcdef") != "" {
			continue
		}
		for _, f := range strings.Fields(rest) {
			if len(f) != 2 {
				break
			}
			v, err := strconv.ParseUint(f, 16, 8)
			if err != nil {
				break
			}
			b = append(b, byte(v))
			if len(b)%16 == 0 {
				break
			}
		}
	}
	if int64(len(b)) != n {
		return nil, fmt.Errorf("qemu-io dumped %d bytes, want %d", len(b), n)
	}
	return b, nil
}

// vxCheckGlimpse is the glimpse part of vxCheckOutput.
func vxCheckGlimpse(out string, w vxWant) (errs []error) {
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(out+": "+format, args...)) }
	f, err := os.Open(out)
	if err != nil {
		fail("%v", err)
		return errs
	}
	st, _ := f.Stat()
	pf, err := inspect.Probe(f, st.Size())
	f.Close()
	if err != nil || pf != w.format {
		fail("Probe: %s, %v", pf, err)
	}
	img, err := inspect.OpenFile(out, inspect.OpenOptions{})
	if err != nil {
		fail("glimpse cannot open the output: %v", err)
		return errs
	}
	defer img.Close()
	if img.Info().Format != w.format || img.Size() != w.size {
		fail("glimpse opens it as %s of %d bytes, want %s of %d", img.Info().Format, img.Size(), w.format, w.size)
	}
	if s := img.Safety(); len(s) != 0 {
		fail("safety findings: %v", s)
	}
	if r := img.Check(); !r.Clean() {
		fail("glimpse check: %+v", r)
	}
	if w.info != nil {
		var d any
		if fs := img.Info().FormatSpecific; fs != nil {
			d = fs.Data
		}
		if err := w.info(d); err != nil {
			fail("glimpse's %s detail: %v", w.format, err)
		}
	}
	switch {
	case w.sha != "":
		got, err := vxGuestSHA(img, w.n)
		if err != nil {
			fail("reading it back: %v", err)
		} else if got != w.sha {
			fail("the first %d guest bytes have the SHA-256 %s, want %s", w.n, got, w.sha)
		}
	case w.srcImg != nil:
		a, b := make([]byte, 512), make([]byte, 512)
		for _, off := range w.spots {
			n := min(512, w.srcImg.Size()-off)
			_, err1 := w.srcImg.ReadAt(a[:n], off)
			_, err2 := img.ReadAt(b[:n], off)
			if err1 != nil || err2 != nil || !bytes.Equal(a[:n], b[:n]) {
				fail("the %d bytes at %d differ from the source's (%v, %v)", n, off, err1, err2)
			}
		}
	default:
		if e, err := img.Extent(0, 0); w.size > 0 && (err != nil || !e.ReadsZero() || e.Length != w.size) {
			fail("an empty disk has the extent %+v, %v", e, err)
		}
	}
	return errs
}

// vxGuestSHA reads the whole disk through the pipeline and returns the SHA-256 of its
// first n bytes; the bytes after them must be zeros (a vhd rounded up to its geometry).
func vxGuestSHA(img inspect.Image, n int64) (string, error) {
	h := sha256.New()
	tw := &vxTailWriter{h: h, n: n, nonZero: -1}
	if err := Convert(context.Background(), img, NewRawStream(tw, "-"), Options{}); err != nil {
		return "", err
	}
	if tw.pos < n {
		return "", fmt.Errorf("the disk has only %d bytes, want at least %d", tw.pos, n)
	}
	if tw.nonZero >= 0 {
		return "", fmt.Errorf("byte %d, past the source's %d, is not zero", tw.nonZero, n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type vxTailWriter struct {
	h       io.Writer
	n, pos  int64
	nonZero int64
}

func (t *vxTailWriter) Write(p []byte) (int, error) {
	head := p[:max(0, min(int64(len(p)), t.n-t.pos))]
	t.h.Write(head)
	for i, c := range p[len(head):] {
		if c != 0 && t.nonZero < 0 {
			t.nonZero = t.pos + int64(len(head)+i)
		}
	}
	t.pos += int64(len(p))
	return len(p), nil
}

// vxParallel runs jobs eight at a time (the tools they run mostly wait) and reports
// their errors.
func vxParallel(t *testing.T, jobs []func() []error) {
	t.Helper()
	sem := make(chan struct{}, 8)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, job := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs := job()
			mu.Lock()
			defer mu.Unlock()
			for _, err := range errs {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// vxQemuRef is the SHA-256 and size of qemu-img convert -O raw of an image.
func vxQemuRef(path, format string) (string, int64, error) {
	dir, err := os.MkdirTemp("", "glimpse-vx-ref")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(dir)
	args := []string{"convert", "-U", "-O", "raw"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out := filepath.Join(dir, "ref.raw")
	if _, err := qemutest.Output("qemu-img", append(args, path, out)...); err != nil {
		return "", 0, err
	}
	return vxFileSHA(out, -1)
}

// vxFileSHA is the SHA-256 of the first n bytes of a file (all of it for n < 0), and the
// file's size.
func vxFileSHA(path string, n int64) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	var r io.Reader = f
	if n >= 0 {
		r = io.LimitReader(f, n)
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}

// vxRawSource writes a raw file of size bytes with data at the given offsets (each a
// 512-byte run of random bytes, cut at the end of the disk) and returns it opened.
func vxRawSource(t testing.TB, dir, name string, size int64, at ...int64) (string, inspect.Image) {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(size), 11))
	for _, off := range at {
		b := make([]byte, min(512, size-off))
		for i := range b {
			b[i] = byte(rng.Uint32()) | 1
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	img, err := inspect.OpenFile(p, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return p, img
}

// vxMatrix converts every readable source format that qemu-img makes with the first
// variant of a writer's options (the raw and qcow2 sources with every variant), checks
// every output against qemu-img and glimpse, and, for a few sources, checks that another
// conversion with other pipeline settings gives the same bytes. size gives the virtual
// size an output must have for a source size and variant.
func vxMatrix(t *testing.T, format inspect.Format, variants [][]string, size func(src int64, kv []string) (int64, error)) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	srcs := buildSources(t, dir, inspect.Raw, inspect.QCOW2, inspect.VMDK, inspect.VHD, inspect.VDI, inspect.VHDX, inspect.ISO)
	var jobs []func() []error
	for _, s := range srcs {
		img := openSource(t, s)
		ref := s.path
		if s.ref != "" {
			ref = s.ref
		}
		jobs = append(jobs, func() (errs []error) {
			sha, n, err := vxQemuRef(ref, s.qemuFormat)
			if err != nil {
				return []error{fmt.Errorf("%s: qemu-img convert: %w", s.name, err)}
			}
			if img.Size() != n {
				return []error{fmt.Errorf("%s: virtual size %d, qemu-img converts %d bytes", s.name, img.Size(), n)}
			}
			for i, kv := range variants {
				if i > 0 && s.name != "raw" && s.name != "qcow2" {
					break // the other variants differ in how they write, not in what they read
				}
				name := fmt.Sprintf("%s.%d.%s", s.name, i, format)
				out := filepath.Join(dir, name)
				if err := vxConvert(format, img, out, Options{}, kv...); err != nil {
					return append(errs, err)
				}
				if format == inspect.VHD && s.format == inspect.ISO && vxDeclared(format, kv) {
					// A fixed vhd is the guest disk followed by a footer: an ISO 9660 guest
					// makes it a polyglot (iso and vhd at once), which glimpse rightly
					// reports. Only its content is checked.
					if err := vxCheckContent(out, format, sha, n); err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", name, err))
					}
					continue
				}
				if s.name == "raw" || s.name == "qcow2-512" || s.name == "vhdx" {
					// Other workers, and chunks of 3 MiB + 4 KiB, which cross block
					// boundaries anywhere: the same bytes.
					again := out + ".again"
					if err := vxConvert(format, img, again, Options{Workers: 5, ChunkSize: 3<<20 + 4096, Buffers: 7}, kv...); err != nil {
						return append(errs, err)
					}
					a, _ := os.ReadFile(out)
					b, _ := os.ReadFile(again)
					if len(a) == 0 || !bytes.Equal(a, b) {
						errs = append(errs, fmt.Errorf("%s %v: another conversion with other workers and chunks gives other bytes", s.name, kv))
					}
					os.Remove(again)
				}
				want, err := size(n, kv)
				if err != nil {
					return append(errs, err)
				}
				errs = append(errs, vxCheckOutput(out, vxWant{format: format, declare: vxDeclared(format, kv), size: want,
					src: ref, srcFormat: s.qemuFormat, sha: sha, n: n})...)
			}
			return errs
		})
	}
	vxParallel(t, jobs)
}

// vxCheckContent opens out as format and checks the SHA-256 of the first n guest bytes.
func vxCheckContent(out string, format inspect.Format, sha string, n int64) error {
	img, err := inspect.OpenFile(out, inspect.OpenOptions{Format: format})
	if err != nil {
		return err
	}
	defer img.Close()
	got, err := vxGuestSHA(img, n)
	if err != nil {
		return err
	}
	if got != sha {
		return fmt.Errorf("the first %d guest bytes have the SHA-256 %s, want %s", n, got, sha)
	}
	return nil
}

// vxDeclared: a fixed vhd has to be named to qemu-img.
func vxDeclared(format inspect.Format, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if format == inspect.VHD && kv[i] == "subformat" && kv[i+1] == "fixed" {
			return true
		}
	}
	return false
}

func vxHas(kv []string, key, val string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == key && kv[i+1] == val {
			return true
		}
	}
	return false
}

// vhdQemuSizes caches vhdQemuSize.
var vhdQemuSizes sync.Map

// vhdQemuSize is the virtual size, CHS geometry (the footer's 4 bytes) and creator of the
// vhd qemu-img creates for a disk of size bytes, with or without force_size: the oracle for
// the writer's sizing.
func vhdQemuSize(size int64, force bool) (int64, [4]byte, error) {
	type res struct {
		n   int64
		chs [4]byte
	}
	key := fmt.Sprint(size, force)
	if v, ok := vhdQemuSizes.Load(key); ok {
		r := v.(res)
		return r.n, r.chs, nil
	}
	dir, err := os.MkdirTemp("", "glimpse-vhd-size")
	if err != nil {
		return 0, [4]byte{}, err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "q.vhd")
	fs := "off"
	if force {
		fs = "on"
	}
	// qemu-img convert creates its target with the source's size in whole sectors.
	if out, err := qemutest.Output("qemu-img", "create", "-q", "-f", "vpc", "-o", "force_size="+fs, p, strconv.FormatInt(alignUp(size, 512), 10)); err != nil {
		return 0, [4]byte{}, fmt.Errorf("qemu-img create %d: %v %s", size, err, out)
	}
	js, err := qemutest.Output("qemu-img", "info", "--output=json", p)
	var info qemutest.ImgInfo
	if err == nil {
		err = json.Unmarshal([]byte(js), &info)
	}
	if err != nil {
		return 0, [4]byte{}, err
	}
	b, err := os.ReadFile(p)
	if err != nil || len(b) < 512 {
		return 0, [4]byte{}, fmt.Errorf("reading qemu's vhd: %v", err)
	}
	var chs [4]byte
	copy(chs[:], b[56:60])
	vhdQemuSizes.Store(key, res{info.VirtualSize, chs})
	return info.VirtualSize, chs, nil
}

// vhdMatrixSize is the size qemu-img gives a vhd of the source's size.
func vhdMatrixSize(n int64, kv []string) (int64, error) {
	s, _, err := vhdQemuSize(n, vxHas(kv, "force_size", "on"))
	return s, err
}

// TestVHDWriterMatrix converts every readable source format to a dynamic vhd (rounded up to
// its geometry, as qemu-img does) and to a fixed one with force_size.
func TestVHDWriterMatrix(t *testing.T) {
	vxMatrix(t, inspect.VHD, [][]string{nil, {"subformat", "fixed", "force_size", "on"}}, vhdMatrixSize)
}

// vhdFooterOf reads the footer at the end of a vhd file.
func vhdFooterOf(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 512 {
		t.Fatalf("%s: %d bytes", p, len(b))
	}
	return b[len(b)-512:]
}

// TestVHDGeometry: the writer's current_size and geometry are qemu-img's for sizes around
// every switch of the spec's algorithm (17, 31, 63 and 255 sectors per track, the largest
// geometry), and with force_size the exact size with the spec's geometry, which is what
// Windows writes (the third-party sample: 10 MiB, 301/4/17).
func TestVHDGeometry(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	sizes := []int64{512, 1 << 20, 10 << 20, 8455680, 512 * 17 * 4 * 1024, 512*17*4*1024 + 512, 512 * 17 * 16 * 1024,
		512*17*16*1024 + 512, 512 * 31 * 16 * 1024, 512*31*16*1024 - 512, 512*31*16*1024 + 512, 1 << 30,
		512 * 65535 * 16 * 63, 512*65535*16*63 - 512, 512*65535*16*63 + 512, 100 << 30, 127 << 30,
		512 * vhdwMaxGeometry, 512*vhdwMaxGeometry - 512, 512*vhdwMaxGeometry + 512, 200 << 30, 2040 << 30, 3000000000}
	var jobs []func() []error
	for _, size := range sizes {
		for _, force := range []bool{false, true} {
			jobs = append(jobs, func() (errs []error) {
				// With force_size qemu keeps the size: asked of qemu for a few sizes only.
				want, chs := alignUp(size, 512), [4]byte{}
				if !force || size%(1<<30) == 0 {
					var err error
					if want, chs, err = vhdQemuSize(size, force); err != nil {
						return []error{err}
					}
				}
				s, err := vhdSize("x", size, force)
				if err != nil {
					return []error{fmt.Errorf("size %d force %v: %v", size, force, err)}
				}
				got := [4]byte{byte(s.cyls >> 8), byte(s.cyls), s.heads, s.spt}
				switch {
				case s.current != want:
					errs = append(errs, fmt.Errorf("size %d force %v: current size %d, qemu %d", size, force, s.current, want))
				case !force && got != chs:
					errs = append(errs, fmt.Errorf("size %d: geometry %x, qemu %x", size, got, chs))
				case force && int64(s.cyls)*int64(s.heads)*int64(s.spt) > size/512:
					errs = append(errs, fmt.Errorf("size %d force: geometry %x holds more than the disk", size, got))
				}
				return errs
			})
		}
	}
	vxParallel(t, jobs)
	if _, err := vhdSize("x", 2040<<30+512, false); err == nil {
		t.Error("a disk past 2040 GiB is accepted")
	}
	// Windows' 10 MiB dynamic disk (creator "win "): current_size 10 MiB, geometry 301/4/17.
	win := qemutest.ThirdParty(t, "dissect.hypervisor/disk/vhd/dynamic.vhd.gz")
	img, err := inspect.OpenFile(win, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	wi := img.Info().FormatSpecific.Data.(inspect.VHDInfo)
	s, err := vhdSize("x", wi.CurrentSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if wi.CreatorApp != "win " || s.current != wi.CurrentSize || s.cyls != wi.Geometry.Cylinders || s.heads != wi.Geometry.Heads || s.spt != wi.Geometry.SectorsPerTrack {
		t.Errorf("force_size gives %+v for Windows' %+v", s, wi)
	}
}

// TestVHDWriterSizes: sizes that need CHS rounding, with and without force_size, in both
// subformats: qemu-img info's virtual size is qemu's own for that size (rounded up, or
// exact with force_size), qemu-img converts the output back to a raw file whose first N
// bytes have the source's SHA-256 and whose rest is zeros, and glimpse agrees. Also: data
// at block boundaries, an empty disk, a disk past the largest geometry (its exact size in
// current_size), and a sparse 1 TiB disk whose dynamic file stays small.
func TestVHDWriterSizes(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	cases := []struct {
		name string
		size int64
		at   []int64
		opt  Options
		all  bool // both subformats with and without force_size
	}{
		{name: "odd", size: 8455680, at: []int64{0, 2<<20 - 512, 2 << 20, 8455680 - 512}, all: true},
		{name: "one-sector", size: 512, at: []int64{0}, all: true},
		{name: "odd-bytes", size: 1000, at: []int64{488}, all: true},
		{name: "10MiB", size: 10 << 20, at: []int64{4096, 10<<20 - 512}},
		{name: "blocks", size: 6<<20 + 3584, at: []int64{2<<20 - 512, 4 << 20, 6<<20 + 3072}},
		{name: "empty", size: 5<<20 + 512},
		{name: "fully-allocated", size: 3<<20 + 512, at: []int64{4096}, opt: Options{FullyAllocated: true}},
		{name: "past-geometry", size: 130<<30 + 1<<20, at: []int64{0, 130 << 30, 130<<30 + 1<<20 - 512}, all: true},
	}
	var jobs []func() []error
	for _, c := range cases {
		p, img := vxRawSource(t, dir, c.name+".raw", c.size, c.at...)
		for _, sub := range []string{"dynamic", "fixed"} {
			for _, force := range []string{"off", "on"} {
				if !c.all && (sub == "fixed") != (force == "on") {
					continue // dynamic as qemu sizes it, and fixed for Azure
				}
				jobs = append(jobs, func() (errs []error) {
					name := fmt.Sprintf("%s.%s.%s.vhd", c.name, sub, force)
					out := filepath.Join(dir, name)
					if err := vxConvert(inspect.VHD, img, out, c.opt, "subformat", sub, "force_size", force); err != nil {
						return []error{err}
					}
					defer os.Remove(out)
					want, _, err := vhdQemuSize(c.size, force == "on")
					if err != nil {
						return []error{err}
					}
					w := vxWant{format: inspect.VHD, declare: sub == "fixed", size: want, src: p, srcFormat: "raw"}
					big := c.size > 1<<30
					if big {
						w.srcImg, w.spots = img, c.at
					} else {
						w.sha, _, err = vxFileSHA(p, -1)
						w.n = c.size
					}
					if err != nil {
						return []error{err}
					}
					errs = vxCheckOutput(out, w)
					if big {
						return errs
					}
					// raw -> vhd -> raw with qemu-img: the source's bytes, then zeros.
					back := out + ".raw"
					defer os.Remove(back)
					args := []string{"convert", "-O", "raw"}
					if sub == "fixed" {
						args = append(args, "-f", "vpc")
					}
					if msg, err := qemutest.Output("qemu-img", append(args, out, back)...); err != nil {
						return append(errs, fmt.Errorf("%s: qemu-img convert back: %v %s", name, err, msg))
					}
					sha, n, err := vxFileSHA(back, c.size)
					if err != nil || sha != w.sha || n != want {
						return append(errs, fmt.Errorf("%s: qemu-img reads %d bytes, the first %d with SHA-256 %s; want %d, %s (%v)", name, n, c.size, sha, want, w.sha, err))
					}
					b, _ := os.ReadFile(back)
					if !isZero(b[c.size:]) {
						errs = append(errs, fmt.Errorf("%s: qemu-img reads data past the source's end", name))
					}
					return errs
				})
			}
		}
	}
	// A sparse 1 TiB disk: the dynamic file holds the header, a 2 MiB BAT and two blocks.
	p, img := vxRawSource(t, dir, "sparse-1T.raw", 1<<40, 0, 1<<40-512)
	jobs = append(jobs, func() []error {
		out := filepath.Join(dir, "sparse-1T.vhd")
		if err := vxConvert(inspect.VHD, img, out, Options{}); err != nil {
			return []error{err}
		}
		want, _, err := vhdQemuSize(1<<40, false)
		if err != nil {
			return []error{err}
		}
		errs := vxCheckOutput(out, vxWant{format: inspect.VHD, size: want, src: p, srcFormat: "raw", srcImg: img, spots: []int64{0, 1<<40 - 512}})
		var st syscall.Stat_t
		if err := syscall.Stat(out, &st); err != nil || st.Blocks*512 > 8<<20 {
			errs = append(errs, fmt.Errorf("a sparse 1 TiB vhd takes %d bytes on disk (%v)", st.Blocks*512, err))
		}
		return errs
	})
	vxParallel(t, jobs)
}

// TestVHDWriterLayout reads the structures back: footer fields and checksum, the copy at 0,
// the dynamic header, the BAT, block placement (data on 4 KiB boundaries, bitmaps all
// ones), and the options that fix the UUID and time stamp.
func TestVHDWriterLayout(t *testing.T) {
	dir := t.TempDir()
	_, img := vxRawSource(t, dir, "src.raw", 10<<20, 0, 4<<20, 4<<20+512, 10<<20-512)
	out := filepath.Join(dir, "out.vhd")
	if err := vxConvert(inspect.VHD, img, out, Options{}, "uuid", "01234567-89ab-cdef-0123-456789abcdef", "timestamp", "2024-01-31T12:00:00Z"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	foot := b[len(b)-512:]
	if !bytes.Equal(foot, b[:512]) {
		t.Fatal("the footer copy at 0 differs from the footer")
	}
	sum := be.Uint32(foot[64:])
	check := bytes.Clone(foot)
	clear(check[64:68])
	if vhdwChecksum(check) != sum {
		t.Errorf("footer checksum %08x", sum)
	}
	wantTime := uint32(1706702400 - vhdwTimeBase)
	if string(foot[:8]) != "conectix" || be.Uint32(foot[8:]) != 2 || be.Uint32(foot[12:]) != 0x10000 || be.Uint64(foot[16:]) != 512 ||
		be.Uint32(foot[24:]) != wantTime || string(foot[28:32]) != "qemu" || string(foot[36:40]) != "Wi2k" ||
		be.Uint32(foot[60:]) != vhdwDynamic || hex.EncodeToString(foot[68:84]) != "0123456789abcdef0123456789abcdef" {
		t.Errorf("footer %x", foot[:96])
	}
	h := b[512:1536]
	hs := be.Uint32(h[36:])
	hc := bytes.Clone(h)
	clear(hc[36:40])
	entries := int((be.Uint64(foot[48:]) + 2<<20 - 1) / (2 << 20)) // 10 MiB rounds up to 10514432 bytes: 6 blocks
	if string(h[:8]) != "cxsparse" || be.Uint64(h[16:]) != 1536 || be.Uint32(h[28:]) != uint32(entries) || entries != 6 ||
		be.Uint32(h[32:]) != 2<<20 || vhdwChecksum(hc) != hs {
		t.Errorf("dynamic header %x", h[:40])
	}
	bat := b[1536:2048]
	var blocks []int64
	for i := range entries {
		e := be.Uint32(bat[4*i:])
		if e == vhdwUnallocated {
			continue
		}
		at := int64(e) * 512
		blocks = append(blocks, int64(i))
		if (at+512)%4096 != 0 {
			t.Errorf("block %d's data at %d is not on a 4 KiB boundary", i, at+512)
		}
		if !bytes.Equal(b[at:at+512], bytes.Repeat([]byte{0xff}, 512)) {
			t.Errorf("block %d's bitmap is not all ones", i)
		}
	}
	if fmt.Sprint(blocks) != "[0 2 4]" || !bytes.Equal(bat[4*entries:], bytes.Repeat([]byte{0xff}, 512-4*entries)) {
		t.Errorf("allocated blocks %v, BAT %x", blocks, bat[:24])
	}
	// Without uuid= and timestamp=, two conversions differ only there.
	a, c := filepath.Join(dir, "a.vhd"), filepath.Join(dir, "c.vhd")
	for _, p := range []string{a, c} {
		w, err := Create(inspect.VHD, p, nil, FormatOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(context.Background(), img, w, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	ba, _ := os.ReadFile(a)
	bc, _ := os.ReadFile(c)
	if bytes.Equal(ba[68:84], bc[68:84]) || len(ba) != len(bc) || !bytes.Equal(ba[512:len(ba)-512], bc[512:len(bc)-512]) {
		t.Error("two conversions without uuid= should differ in their UUIDs only")
	}
}

// TestVHDWriterOptionErrors: refused options and outputs, with messages that say why.
func TestVHDWriterOptionErrors(t *testing.T) {
	vxOptionErrors(t, inspect.VHD, []vxOptErr{
		{"unknown key", map[string]string{"cluster_size": "65536"}, false, "cluster_size"},
		{"subformat", map[string]string{"subformat": "differencing"}, false, "dynamic or fixed"},
		{"force_size", map[string]string{"force_size": "maybe"}, false, "on or off"},
		{"size", map[string]string{"size": "1G"}, false, "source's"},
		{"uuid", map[string]string{"uuid": "nope"}, false, "UUID"},
		{"timestamp text", map[string]string{"timestamp": "yesterday"}, false, "RFC 3339"},
		{"timestamp early", map[string]string{"timestamp": "1999-12-31T23:59:59Z"}, false, "2000"},
		{"timestamp late", map[string]string{"timestamp": "6000000000"}, false, "2136"},
		{"-c", nil, true, "compressed"},
	})
	// 2040 GiB is the largest vhd.
	vxSizeLimit(t, inspect.VHD, 2040<<30+512, "2040 GiB")
}

// vxOptErr is a refused option list.
type vxOptErr struct {
	name     string
	opts     map[string]string
	compress bool
	want     string
}

// vxOptionErrors checks that Create refuses each option list with a message that says why,
// and that stdout and directories are refused, leaving nothing behind.
func vxOptionErrors(t *testing.T, format inspect.Format, cases []vxOptErr) {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "x")
	cases = append(cases, vxOptErr{"stdout", nil, false, "standard output"})
	for _, c := range cases {
		name := out
		if c.name == "stdout" {
			name = "-"
		}
		w, err := Create(format, name, io.Discard, FormatOptions{Options: c.opts, Compress: c.compress})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: error %v, want one that says %q", format, c.name, err, c.want)
		}
		if w != nil {
			w.Abort()
		}
	}
	if w, err := Create(format, dir, nil, FormatOptions{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("%s to a directory: %v", format, err)
		if w != nil {
			w.Abort()
		}
	}
	noOutput(t, dir)
}

// vxSizeLimit checks that a disk of size bytes is refused in Begin with a message that says
// want, leaving nothing behind.
func vxSizeLimit(t *testing.T, format inspect.Format, size int64, want string) {
	t.Helper()
	dir := t.TempDir()
	w, err := Create(format, filepath.Join(dir, "x"), nil, FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeImage{size: size, extents: []inspect.Extent{{Start: 0, Length: size, Kind: inspect.KindHole, Offset: -1}}}
	if err := Convert(context.Background(), f, w, Options{}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s of %d bytes: error %v, want one that says %q", format, size, err, want)
	}
	noOutput(t, dir)
}

// failingVX fails the Write of the data chunk that reaches past at (a disk-full stand-in
// after some output has gone out).
type failingVX struct {
	Writer
	at int64
}

func (f failingVX) Write(c *Chunk) error {
	if !c.Zero() && c.Off+c.Len > f.at {
		return errFakeWrite
	}
	return f.Writer.Write(c)
}

// vxFailures: write and read errors and cancellation leave nothing under the output name
// (and an older file there untouched); a full file system is a clear error that names the
// output.
func vxFailures(t *testing.T, format inspect.Format, variants [][]string) {
	f := newFake(inspect.KindData, 3<<20, inspect.KindHole, 40<<20, inspect.KindData, 2<<20+512)
	create := func(t *testing.T, p string, kv []string) Writer {
		opts := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			opts[kv[i]] = kv[i+1]
		}
		w, err := Create(format, p, nil, FormatOptions{Options: opts})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	for _, kv := range variants {
		name := strings.Join(kv, "=")
		t.Run(name+"/write error", func(t *testing.T) {
			dir := t.TempDir()
			old := filepath.Join(dir, "out")
			if err := os.WriteFile(old, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			w := create(t, old, kv)
			if err := Convert(context.Background(), f, failingVX{w, 44 << 20}, Options{}); !errors.Is(err, errFakeWrite) {
				t.Fatalf("error %v", err)
			}
			noOutput(t, dir, "out")
			if b, _ := os.ReadFile(old); string(b) != "old" {
				t.Fatal("the old output changed")
			}
		})
		t.Run(name+"/read error", func(t *testing.T) {
			dir := t.TempDir()
			g := f.clone()
			g.readHook = func(p []byte, off int64) error {
				if off >= 43<<20 {
					return errFakeRead
				}
				return nil
			}
			w := create(t, filepath.Join(dir, "out"), kv)
			if err := Convert(context.Background(), g, w, Options{Workers: 2}); !errors.Is(err, errFakeRead) {
				t.Fatalf("error %v", err)
			}
			noOutput(t, dir)
		})
		t.Run(name+"/cancel", func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			g := f.clone()
			var once sync.Once
			g.readHook = func(p []byte, off int64) error {
				if off >= 1<<20 {
					once.Do(cancel)
					<-ctx.Done()
				}
				return nil
			}
			w := create(t, filepath.Join(dir, "out"), kv)
			if err := Convert(ctx, g, w, Options{Workers: 2, ChunkSize: 256 << 10}); !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v", err)
			}
			noOutput(t, dir)
		})
	}
	t.Run("file system full", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
			t.Skipf("cannot mount a tmpfs to fill (%v); the failing writer covers the write path", err)
		}
		defer syscall.Unmount(dir, 0)
		at := make([]int64, 0, 8192)
		for off := int64(0); off < 4<<20; off += 512 {
			at = append(at, off)
		}
		_, rnd := vxRawSource(t, t.TempDir(), "random.raw", 4<<20, at...)
		for _, kv := range variants {
			w := create(t, filepath.Join(dir, "out"), kv)
			err := Convert(context.Background(), rnd, w, Options{})
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "out") {
				t.Fatalf("%v: error %v, want a clear disk-full error naming the output", kv, err)
			}
			noOutput(t, dir)
		}
	})
}

// TestVHDWriterFailures: see vxFailures.
func TestVHDWriterFailures(t *testing.T) {
	vxFailures(t, inspect.VHD, [][]string{{"subformat", "dynamic"}, {"subformat", "fixed"}})
}

// vxContract: Commit before Begin fails, chunks out of order or past the disk are internal
// errors (for the Ordered writers), Commit checks that the whole disk came, Abort is
// idempotent, and nothing is left behind.
func vxContract(t *testing.T, format inspect.Format, kv []string, ordered bool) {
	t.Helper()
	dir := t.TempDir()
	opts := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		opts[kv[i]] = kv[i+1]
	}
	w, err := Create(format, filepath.Join(dir, "out"), nil, FormatOptions{Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil {
		t.Errorf("%s %v: Commit before Begin", format, kv)
	}
	l, err := w.Begin(4 << 20)
	if err != nil || l.Ordered != ordered {
		t.Fatalf("%s %v: Begin: %+v, %v", format, kv, l, err)
	}
	data := make([]byte, 4096)
	bad := []Chunk{{Off: 4 << 20, Len: 512}, {Off: 0, Len: 4096, Data: data[:1000]}, {Off: -512, Len: 512}}
	if ordered {
		bad = append(bad, Chunk{Off: 1 << 20, Len: 4096})
	}
	for _, c := range bad {
		if err := w.Write(&c); err == nil || !strings.Contains(err.Error(), "internal error") {
			t.Errorf("%s %v: %v: error %v", format, kv, &c, err)
		}
	}
	if ordered {
		if err := w.Write(&Chunk{Off: 0, Len: 64 << 10}); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err == nil || !strings.Contains(err.Error(), "end at guest offset") {
			t.Errorf("%s %v: Commit of part of a disk: %v", format, kv, err)
		}
	}
	w.Abort()
	w.Abort()
	noOutput(t, dir)
}

func TestVHDWriterContract(t *testing.T) {
	vxContract(t, inspect.VHD, nil, true)
	vxContract(t, inspect.VHD, []string{"subformat", "fixed"}, false)
}

// vxFuzzOptions: whatever -o list a writer accepts, the file it makes opens in glimpse with
// no findings, a clean check and the disk's content.
func vxFuzzOptions(f *testing.F, format inspect.Format, seeds []string) {
	for _, s := range seeds {
		f.Add(s)
	}
	src := newFake(inspect.KindData, 64<<10, inspect.KindHole, 3<<20, inspect.KindData, 1024)
	want := src.want()
	f.Fuzz(func(t *testing.T, list string) {
		opts := map[string]string{}
		if ParseOptionList(list, opts) != nil {
			return
		}
		if v, ok := opts["block_size"]; ok && v != "1M" && v != "1m" {
			return // keep the fuzzer's files small
		}
		if v, ok := opts["log_size"]; ok && len(v) > 2 {
			return
		}
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		w, err := Create(format, out, nil, FormatOptions{Options: opts})
		if err != nil {
			return
		}
		if err := Convert(context.Background(), src, w, Options{}); err != nil {
			t.Fatalf("%q: %v", list, err)
		}
		img, err := inspect.OpenFile(out, inspect.OpenOptions{Format: format})
		if err != nil {
			t.Fatalf("%q: glimpse cannot open the output: %v", list, err)
		}
		defer img.Close()
		if s := img.Safety(); len(s) != 0 {
			t.Fatalf("%q: findings %v", list, s)
		}
		if r := img.Check(); !r.Clean() {
			t.Fatalf("%q: check %+v", list, r)
		}
		got := make([]byte, img.Size())
		if _, err := img.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if len(got) < len(want) || !bytes.Equal(got[:len(want)], want) || !isZero(got[len(want):]) {
			t.Fatalf("%q: content differs", list)
		}
	})
}

func FuzzVHDWriterOptions(f *testing.F) {
	vxFuzzOptions(f, inspect.VHD, []string{"", "subformat=fixed", "force_size=on", "subformat=fixed,force_size=yes",
		"uuid=00000000000000000000000000000001,timestamp=946684800", "timestamp=2136-02-07T06:28:15Z", "force_size=off,subformat=dynamic"})
}

// vxBenchSource writes a raw disk of n bytes: a third random, a third text, a third zeros,
// in 1 MiB stripes, like a used file system.
func vxBenchSource(b *testing.B, n int64) inspect.Image {
	b.Helper()
	p := filepath.Join(b.TempDir(), "bench.raw")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	text := []byte(strings.Repeat("a vhd block is a sector bitmap and two megabytes of data. ", 1<<15))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		switch (off >> 20) % 3 {
		case 0:
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		case 1:
			copy(buf, text[(off>>20)%1000:])
		default:
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Truncate(n); err != nil {
		b.Fatal(err)
	}
	f.Close()
	img, err := inspect.OpenFile(p, inspect.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	return img
}

// vxBench converts a 384 MiB raw disk with each option list.
func vxBench(b *testing.B, format inspect.Format, variants [][]string) {
	img := vxBenchSource(b, 384<<20)
	for _, kv := range variants {
		b.Run(strings.Join(kv, "="), func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "out")
			b.SetBytes(img.Size())
			for b.Loop() {
				if err := vxConvert(format, img, out, Options{}, kv...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkWriteVHD(b *testing.B) {
	vxBench(b, inspect.VHD, [][]string{{"subformat", "dynamic"}, {"subformat", "fixed"}})
}
