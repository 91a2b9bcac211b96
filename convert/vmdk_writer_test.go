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

// vmdkSubformats are the subformats the writer makes.
var vmdkSubformats = []string{vmdkMonolithicSparse, vmdkStreamOptimized}

// vmdkConvert converts img into a vmdk at out (or "-" into stdout) with the -o options kv
// ("key", "value", …); the CID is fixed unless kv sets it. It is safe in any goroutine.
func vmdkConvert(img inspect.Image, out string, stdout io.Writer, copt Options, kv ...string) error {
	opts := map[string]string{"cid": "6c696d70"}
	for i := 0; i+1 < len(kv); i += 2 {
		opts[kv[i]] = kv[i+1]
	}
	w, err := Create(inspect.VMDK, out, stdout, FormatOptions{Options: opts})
	if err != nil {
		return fmt.Errorf("Create %v: %w", kv, err)
	}
	if err := Convert(context.Background(), img, w, copt); err != nil {
		return fmt.Errorf("Convert to vmdk %v: %w", kv, err)
	}
	return nil
}

func vmdkWrite(t testing.TB, img inspect.Image, out string, stdout io.Writer, copt Options, kv ...string) {
	t.Helper()
	if err := vmdkConvert(img, out, stdout, copt, kv...); err != nil {
		t.Fatal(err)
	}
}

// vmdkQemuInfo is the part of qemu-img info's vmdk detail the tests look at.
type vmdkQemuInfo struct {
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	FormatSpecific struct {
		Data struct {
			CID        uint32 `json:"cid"`
			ParentCID  uint32 `json:"parent-cid"`
			CreateType string `json:"create-type"`
			Extents    []struct {
				Compressed bool `json:"compressed"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

// vmdkQemuRef is the SHA-256 and size of qemu-img convert -O raw of an image.
func vmdkQemuRef(path, format string) (string, int64, error) {
	dir, err := os.MkdirTemp("", "glimpse-vmdk-ref")
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
	f, err := os.Open(out)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// vmdkWant is what an output must be.
type vmdkWant struct {
	sub       string // the subformat
	src       string // the source, for qemu-img compare ("" to skip it)
	srcFormat string // its qemu-img format ("" to probe)
	sha       string // the guest SHA-256 ("" to skip hashing)
	// img is the source, for glimpse's Compare when sha is empty (large sparse disks,
	// whose zeros Compare skips); when both are empty the disk must read as one zero
	// extent.
	img  inspect.Image
	size int64 // the virtual size
	// noInfo skips qemu-img info where compare already proves the format and the size
	// (it prints a warning when the sizes differ).
	noInfo bool
}

// vmdkCheckOutput checks an output against qemu-img (info, check, compare) and glimpse's
// reader (probe, no findings, clean check, the guest data). It never stops the test, so
// that it can run in any goroutine; what it finds comes back as errors.
func vmdkCheckOutput(out string, w vmdkWant) (errs []error) {
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(out+": "+format, args...)) }
	subformat, wantSize := w.sub, w.size
	if !w.noInfo || w.src == "" {
		js, err := qemutest.Output("qemu-img", "info", "--output=json", "-U", out)
		var info vmdkQemuInfo
		if err == nil {
			err = json.Unmarshal([]byte(js), &info)
		}
		d := info.FormatSpecific.Data
		switch {
		case err != nil:
			fail("qemu-img info: %v", err)
		case info.Format != "vmdk" || info.VirtualSize != wantSize:
			fail("qemu-img info: format %s, virtual size %d; want vmdk, %d", info.Format, info.VirtualSize, wantSize)
		case d.CreateType != subformat || d.ParentCID != 0xffffffff || len(d.Extents) != 1 || d.Extents[0].Compressed != (subformat == vmdkStreamOptimized):
			fail("qemu-img info format-specific: %+v", d)
		}
	}
	if msg, err := qemutest.Output("qemu-img", "check", out); err != nil || !strings.Contains(msg, "No errors were found") {
		fail("qemu-img check: %s %v", msg, err)
	}
	if w.src != "" {
		args := []string{"compare", "-F", "vmdk"}
		if w.srcFormat != "" {
			args = append(args, "-f", w.srcFormat)
		}
		if msg, err := qemutest.Output("qemu-img", append(args, w.src, out)...); err != nil || strings.TrimSpace(msg) != "Images are identical." {
			fail("qemu-img compare: %s %v", msg, err)
		}
	}
	f, err := os.Open(out)
	if err != nil {
		fail("%v", err)
		return errs
	}
	st, _ := f.Stat()
	pf, err := inspect.Probe(f, st.Size())
	f.Close()
	if err != nil || pf != inspect.VMDK {
		fail("Probe: %s, %v", pf, err)
	}
	img, err := inspect.OpenFile(out, inspect.OpenOptions{})
	if err != nil {
		fail("glimpse cannot open the output: %v", err)
		return errs
	}
	defer img.Close()
	if img.Info().Format != inspect.VMDK || img.Size() != wantSize {
		fail("glimpse opens it as %s of %d bytes", img.Info().Format, img.Size())
	}
	if vi, ok := img.Info().FormatSpecific.Data.(inspect.VMDKInfo); !ok || vi.CreateType != subformat || vi.DescriptorCreateType != "" {
		fail("glimpse's vmdk detail: %+v", img.Info().FormatSpecific.Data)
	}
	if s := img.Safety(); len(s) != 0 {
		fail("safety findings: %v", s)
	}
	if r := img.Check(); !r.Clean() {
		fail("glimpse check: %+v", r)
	}
	if w.sha == "" && w.img != nil {
		if r, err := Compare(context.Background(), w.img, img, CompareOptions{}); err != nil || !r.Identical || r.SizeMismatch() {
			fail("glimpse compare with the source: %+v, %v", r, err)
		}
		return errs
	}
	if w.sha == "" {
		if e, err := img.Extent(0, 0); err != nil || !e.ReadsZero() || e.Length != wantSize {
			fail("an empty disk has the extent %+v, %v", e, err)
		}
		return errs
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := Convert(context.Background(), img, NewRawStream(cw, "-"), Options{}); err != nil {
		fail("reading it back: %v", err)
	} else if got := hex.EncodeToString(h.Sum(nil)); got != w.sha || cw.n != wantSize {
		fail("guest SHA-256 %s (%d bytes), want %s (%d bytes)", got, cw.n, w.sha, wantSize)
	}
	return errs
}

func vmdkVerify(t testing.TB, out, subformat, src, srcFormat, wantSHA string, wantSize int64) {
	t.Helper()
	for _, err := range vmdkCheckOutput(out, vmdkWant{sub: subformat, src: src, srcFormat: srcFormat, sha: wantSHA, size: wantSize}) {
		t.Error(err)
	}
}

// vmdkParallel runs jobs eight at a time (the tools they run mostly wait) and reports
// their errors.
func vmdkParallel(t *testing.T, jobs []func() []error) {
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

// TestVMDKWriterMatrix converts qemu-img's images of every readable format to both
// subformats and checks each output with qemu-img and glimpse. For a few sources a second
// conversion with other pipeline settings must give the same bytes.
func TestVMDKWriterMatrix(t *testing.T) {
	dir := t.TempDir()
	srcs := buildSources(t, dir, inspect.Raw, inspect.QCOW2, inspect.VMDK, inspect.VHD, inspect.VDI, inspect.VHDX)
	var jobs []func() []error
	for _, s := range srcs {
		img := openSource(t, s)
		ref := s.path
		if s.ref != "" {
			ref = s.ref
		}
		jobs = append(jobs, func() (errs []error) {
			want, wantSize, err := vmdkQemuRef(ref, s.qemuFormat)
			if err != nil {
				return []error{fmt.Errorf("%s: qemu-img convert: %w", s.name, err)}
			}
			if img.Size() != wantSize {
				return []error{fmt.Errorf("%s: virtual size %d, qemu-img converts %d bytes", s.name, img.Size(), wantSize)}
			}
			for _, sub := range vmdkSubformats {
				out := filepath.Join(dir, s.name+"."+sub+".vmdk")
				again := filepath.Join(dir, s.name+"."+sub+".again.vmdk")
				if err := vmdkConvert(img, out, nil, Options{}, "subformat", sub); err != nil {
					return append(errs, err)
				}
				if s.name == "raw" || s.name == "qcow2-512" || s.name == "vhdx" {
					if err := vmdkConvert(img, again, nil, Options{Workers: 5, ChunkSize: 128 << 10, Buffers: 7}, "subformat", sub, "extent_name", filepath.Base(out)); err != nil {
						return append(errs, err)
					}
					a, _ := os.ReadFile(out)
					b, _ := os.ReadFile(again)
					if len(a) == 0 || !bytes.Equal(a, b) {
						errs = append(errs, fmt.Errorf("%s %s: another conversion with other workers and chunks gives other bytes", s.name, sub))
					}
				}
				errs = append(errs, vmdkCheckOutput(out, vmdkWant{sub: sub, src: ref, srcFormat: s.qemuFormat, sha: want, size: wantSize, noInfo: true})...)
			}
			return errs
		})
	}
	vmdkParallel(t, jobs)
}

// vmdkDescriptor returns the embedded descriptor text of a hosted sparse file.
func vmdkDescriptor(t testing.TB, b []byte) string {
	t.Helper()
	off := int64(binary.LittleEndian.Uint64(b[28:])) * 512
	n := int64(binary.LittleEndian.Uint64(b[36:])) * 512
	if off <= 0 || off+n > int64(len(b)) {
		t.Fatalf("no descriptor at sector %d", off/512)
	}
	return strings.TrimRight(string(b[off:off+n]), "\x00")
}

// TestVMDKWriterLikeQemu: for the same data, CID and extent name, monolithicSparse is
// qemu-img's file byte for byte (but for the CID's leading zeros). streamOptimized differs
// from qemu's on purpose (footer, end-of-stream marker, no redundant directory), so only
// its descriptor and header fields are compared.
func TestVMDKWriterLikeQemu(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeBase(t, base)
	img, err := inspect.OpenFile(base, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, sub := range vmdkSubformats {
		for _, adapter := range []string{"ide", "lsilogic"} {
			q := filepath.Join(dir, "qemu.vmdk")
			qemutest.Img(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+sub+",adapter_type="+adapter+",hwversion=7", base, q)
			qb, err := os.ReadFile(q)
			if err != nil {
				t.Fatal(err)
			}
			qd := vmdkDescriptor(t, qb)
			var cid string
			for _, l := range strings.Split(qd, "\n") {
				if c, ok := strings.CutPrefix(l, "CID="); ok {
					cid = c
				}
			}
			out := filepath.Join(dir, "glimpse.vmdk")
			vmdkWrite(t, img, out, nil, Options{}, "subformat", sub, "adapter_type", adapter, "hwversion", "7", "cid", cid, "extent_name", "qemu.vmdk")
			gb, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			gd := vmdkDescriptor(t, gb)
			n, err := strconv.ParseUint(cid, 16, 32)
			if err != nil {
				t.Fatalf("qemu's CID %q: %v", cid, err)
			}
			if norm := strings.Replace(gd, fmt.Sprintf("CID=%08x", n), "CID="+cid, 1); norm != qd {
				t.Errorf("%s %s: descriptor\n%s\nqemu's\n%s", sub, adapter, gd, qd)
			}
			hq, hg := qb[:80], gb[:80]
			if sub == vmdkMonolithicSparse {
				clear(qb[512 : 21*512])
				clear(gb[512 : 21*512])
				if !bytes.Equal(qb, gb) {
					t.Errorf("%s: the file differs from qemu's outside the descriptor (%d and %d bytes)", sub, len(gb), len(qb))
				}
				continue
			}
			le := binary.LittleEndian
			for _, f := range []struct {
				name string
				off  int
				n    int
			}{{"magic", 0, 4}, {"version", 4, 4}, {"capacity", 12, 8}, {"grainSize", 20, 8}, {"descriptorOffset", 28, 8},
				{"descriptorSize", 36, 8}, {"numGTEsPerGT", 44, 4}, {"newline test", 73, 4}, {"compressAlgorithm", 77, 2}} {
				if !bytes.Equal(hq[f.off:f.off+f.n], hg[f.off:f.off+f.n]) {
					t.Errorf("%s: header %s %x, qemu writes %x", sub, f.name, hg[f.off:f.off+f.n], hq[f.off:f.off+f.n])
				}
			}
			if fq, fg := le.Uint32(hq[8:])&^vmdkFlagRGD, le.Uint32(hg[8:]); fq != fg {
				t.Errorf("%s: flags %#x, qemu's without the redundant directory %#x", sub, fg, fq)
			}
			if le.Uint64(hg[56:]) != vmdkGDAtEnd || le.Uint64(hg[48:]) != 0 {
				t.Errorf("%s: gdOffset %#x rgdOffset %#x, want GD_AT_END and 0", sub, le.Uint64(hg[56:]), le.Uint64(hg[48:]))
			}
		}
	}
}

// vmdkWalkStream parses a streamOptimized file from start to end as a one-pass reader
// (VMware's importer, VirtualBox's sequential mode) would, and checks that the markers come
// in the order the spec gives: grains in guest order with each grain table after its
// grains and before later grains, then the directory, the footer and the end-of-stream
// marker as the last three sectors.
func vmdkWalkStream(t testing.TB, b []byte) (grains int) {
	t.Helper()
	le := binary.LittleEndian
	if len(b)%512 != 0 || len(b) < 4*512 {
		t.Fatalf("stream of %d bytes", len(b))
	}
	over := int(le.Uint64(b[64:])) * 512
	grainSecs := le.Uint64(b[20:])
	pos := over
	lastLBA, lastGT := int64(-1), int64(-1)
	gts := map[int]bool{}
	var gdAt int
	for {
		if pos+512 > len(b) {
			t.Fatalf("stream ends inside a marker at %d", pos)
		}
		val, size, typ := le.Uint64(b[pos:]), le.Uint32(b[pos+8:]), le.Uint32(b[pos+12:])
		if size != 0 {
			lba := int64(val)
			if lba <= lastLBA || uint64(lba)%grainSecs != 0 {
				t.Fatalf("grain at %d: LBA %d after %d", pos, lba, lastLBA)
			}
			if gt := lba / int64(grainSecs) / 512; gt <= lastGT {
				t.Fatalf("grain at %d (LBA %d) after the table of a later range", pos, lba)
			}
			lastLBA = lba
			grains++
			pos += int(alignUp(int64(12+size), 512))
			continue
		}
		switch typ {
		case vmdkMarkerGT:
			if val != vmdkGTSectors {
				t.Fatalf("grain table marker at %d: %d sectors", pos, val)
			}
			gts[pos/512+1] = true
			lastGT = lastLBA / int64(grainSecs) / 512
			pos += 512 * 5
		case vmdkMarkerGD:
			gdAt = pos/512 + 1
			pos += 512 * (1 + int(val))
		case vmdkMarkerFooter:
			if val != 1 || pos+3*512 != len(b) {
				t.Fatalf("footer marker at %d of %d bytes", pos, len(b))
			}
			foot := b[pos+512 : pos+1024]
			if !bytes.Equal(foot[:56], b[:56]) || !bytes.Equal(foot[64:512], b[64:512]) || le.Uint64(foot[56:]) != uint64(gdAt) {
				t.Fatalf("footer is not the header with gdOffset %d", gdAt)
			}
			if !bytes.Equal(b[pos+1024:], make([]byte, 512)) {
				t.Fatal("the last sector is not an end-of-stream marker")
			}
			// every directory entry names a table behind a marker
			ng := (le.Uint64(b[12:]) + grainSecs - 1) / grainSecs
			gdEntries := int((ng + 511) / 512)
			for i := 0; i < gdEntries; i++ {
				if e := int(le.Uint32(b[gdAt*512+4*i:])); e != 0 && !gts[e] {
					t.Fatalf("directory entry %d names sector %d, not a grain table", i, e)
				}
			}
			return grains
		default:
			t.Fatalf("marker type %d at %d", typ, pos)
		}
	}
}

// TestVMDKStreamPipe writes streamOptimized through an os.Pipe, read by a goroutine that
// copies it to a file and feeds glimpse's stream inspector: the bytes are those of a file
// conversion, the inspector's verdict is safe, and a one-pass walk finds every marker in
// order.
func TestVMDKStreamPipe(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeBase(t, base)
	img, err := inspect.OpenFile(base, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	want, wantSize := qemutest.ConvertSHA256(t, base, "raw")
	file := filepath.Join(dir, "file.vmdk")
	vmdkWrite(t, img, file, nil, Options{}, "subformat", vmdkStreamOptimized, "extent_name", "disk.vmdk")

	piped := filepath.Join(dir, "piped.vmdk")
	pf, err := os.Create(piped)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	insp := inspect.NewStream(inspect.OpenOptions{Format: inspect.VMDK})
	var copyErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, copyErr = io.Copy(io.MultiWriter(pf, insp), r)
		r.Close()
	}()
	vmdkWrite(t, img, "-", w, Options{Workers: 3, ChunkSize: 192 << 10}, "subformat", vmdkStreamOptimized)
	w.Close()
	wg.Wait()
	pf.Close()
	if copyErr != nil {
		t.Fatal(copyErr)
	}
	if v := insp.Close(); !v.Safe() {
		t.Errorf("stream inspector: %+v", v)
	}
	if mustSHA(t, piped) != mustSHA(t, file) {
		t.Fatal("the piped stream differs from the file")
	}
	vmdkVerify(t, piped, vmdkStreamOptimized, base, "raw", want, wantSize)
	b, err := os.ReadFile(piped)
	if err != nil {
		t.Fatal(err)
	}
	if n := vmdkWalkStream(t, b); n == 0 {
		t.Error("no grains in the stream")
	}
	// -c is accepted for streamOptimized, as qemu-img accepts it.
	if _, err := Create(inspect.VMDK, "-", io.Discard, FormatOptions{Compress: true, Options: map[string]string{"subformat": vmdkStreamOptimized}}); err != nil {
		t.Errorf("-c with streamOptimized: %v", err)
	}
}

// vmdkRawSource writes a raw file of size bytes with data at the given offsets (each a
// 512-byte run of random bytes, cut at the end of the disk) and returns it opened.
func vmdkRawSource(t testing.TB, dir, name string, size int64, at ...int64) (string, inspect.Image) {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(size), 7))
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

// TestVMDKWriterSizes: disks whose size is not a multiple of the grain (or of a sector,
// which qemu rounds up), data in the first and last sectors and at grain and grain-table
// boundaries, an empty disk, -S 0, other grain sizes, and an empty 1 TiB disk.
func TestVMDKWriterSizes(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	cases := []struct {
		name string
		size int64
		at   []int64
		kv   []string
		opt  Options
	}{
		{name: "one-sector", size: 512, at: []int64{0}},
		{name: "odd-bytes", size: 1000, at: []int64{488}},
		{name: "partial-grain", size: 3<<16 + 1536, at: []int64{0, 64<<10 - 512, 3<<16 + 1024}},
		{name: "table-boundary", size: 96<<20 + 4096, at: []int64{32<<20 - 512, 32 << 20, 64<<20 + 65536, 96<<20 + 3584}},
		{name: "empty", size: 5<<20 + 512},
		{name: "fully-allocated", size: 1<<20 + 512, at: []int64{4096}, opt: Options{FullyAllocated: true}},
		{name: "grain-4k", size: 3<<20 + 512, at: []int64{0, 2<<20 + 4096, 3 << 20}, kv: []string{"grain_size", "4k"}},
		{name: "grain-1M", size: 600<<20 + 512, at: []int64{1<<20 - 512, 512 << 20, 600 << 20}, kv: []string{"grain_size", "1M"}},
	}
	var jobs []func() []error
	for _, c := range cases {
		p, img := vmdkRawSource(t, dir, c.name+".raw", c.size, c.at...)
		jobs = append(jobs, func() (errs []error) {
			// Small disks are hashed; large ones are compared with glimpse's Compare,
			// which skips their zeros.
			want, wantSize := "", (c.size+511)/512*512
			if c.size <= 16<<20 {
				var err error
				if want, wantSize, err = vmdkQemuRef(p, "raw"); err != nil {
					return []error{err}
				}
			}
			for _, sub := range vmdkSubformats {
				out := filepath.Join(dir, c.name+"."+sub+".vmdk")
				if err := vmdkConvert(img, out, nil, c.opt, append([]string{"subformat", sub}, c.kv...)...); err != nil {
					return append(errs, err)
				}
				errs = append(errs, vmdkCheckOutput(out, vmdkWant{sub: sub, src: p, srcFormat: "raw", sha: want, img: img, size: wantSize})...)
			}
			return errs
		})
	}
	// An empty 1 TiB disk: qemu-img compare and map take minutes there, so only info and
	// check run, and glimpse's map must be one zero extent.
	src := qemutest.Create(t, dir, "empty.qcow2", "qcow2", "1T")
	big, err := inspect.OpenFile(src, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	for _, sub := range vmdkSubformats {
		jobs = append(jobs, func() []error {
			out := filepath.Join(dir, "empty-1TiB."+sub+".vmdk")
			if err := vmdkConvert(big, out, nil, Options{}, "subformat", sub); err != nil {
				return []error{err}
			}
			errs := vmdkCheckOutput(out, vmdkWant{sub: sub, size: 1 << 40})
			var st syscall.Stat_t
			if err := syscall.Stat(out, &st); err != nil || st.Blocks*512 > 2<<20 {
				errs = append(errs, fmt.Errorf("%s: an empty 1 TiB disk takes %d bytes on disk (%v)", sub, st.Blocks*512, err))
			}
			return errs
		})
	}
	vmdkParallel(t, jobs)
}

// TestVMDKWriterOptions checks the descriptor and header each option gives, with qemu-img
// and glimpse reading them back.
func TestVMDKWriterOptions(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	p, img := vmdkRawSource(t, dir, "src.raw", 40<<20, 0, 30<<20)
	want, _ := qemutest.ConvertSHA256(t, p, "raw")
	cases := []struct {
		kv    []string
		lines []string // descriptor lines wanted
	}{
		{nil, []string{`CID=6c696d70`, `parentCID=ffffffff`, `createType="monolithicSparse"`, `RW 81920 SPARSE "0.vmdk"`,
			`ddb.virtualHWVersion = "4"`, `ddb.geometry.cylinders = "81"`, `ddb.geometry.heads = "16"`, `ddb.geometry.sectors = "63"`,
			`ddb.adapterType = "ide"`, `ddb.toolsVersion = "2147483647"`}},
		{[]string{"adapter_type", "lsilogic", "hwversion", "14", "toolsversion", "12352", "cid", "0000abcd"},
			[]string{`CID=0000abcd`, `ddb.virtualHWVersion = "14"`, `ddb.geometry.cylinders = "5"`, `ddb.geometry.heads = "255"`,
				`ddb.adapterType = "lsilogic"`, `ddb.toolsVersion = "12352"`}},
		{[]string{"adapter_type", "buslogic", "compat6", "on"}, []string{`ddb.virtualHWVersion = "6"`, `ddb.adapterType = "buslogic"`}},
		{[]string{"adapter_type", "legacyESX", "subformat", "streamOptimized"}, []string{`createType="streamOptimized"`, `ddb.adapterType = "legacyESX"`, `ddb.geometry.heads = "255"`}},
		{[]string{"uuid", "6C696D70-7365-4000-8000-000000000001"}, []string{`ddb.uuid = "6c 69 6d 70 73 65 40 00-80 00 00 00 00 00 00 01"`}},
		{[]string{"extent_name", "my disk (1).vmdk"}, []string{`RW 81920 SPARSE "my disk (1).vmdk"`}},
	}
	var jobs []func() []error
	for i, c := range cases {
		out := filepath.Join(dir, strconv.Itoa(i)+".vmdk")
		vmdkWrite(t, img, out, nil, Options{}, c.kv...)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		d := vmdkDescriptor(t, b)
		lines := strings.Split(d, "\n")
		if lines[0] != "# Disk DescriptorFile" || lines[1] != "version=1" {
			t.Errorf("%v: descriptor starts %q", c.kv, lines[:2])
		}
		for _, l := range c.lines {
			if !strings.Contains("\n"+d, "\n"+l+"\n") {
				t.Errorf("%v: descriptor has no line %q:\n%s", c.kv, l, d)
			}
		}
		g, err := inspect.OpenFile(out, inspect.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vi := g.Info().FormatSpecific.Data.(inspect.VMDKInfo)
		g.Close()
		for i := 0; i+1 < len(c.kv); i += 2 {
			switch c.kv[i] {
			case "adapter_type":
				if vi.AdapterType != c.kv[i+1] {
					t.Errorf("glimpse reads adapter %q, want %q", vi.AdapterType, c.kv[i+1])
				}
			case "hwversion":
				if vi.HWVersion != c.kv[i+1] {
					t.Errorf("glimpse reads hwversion %q, want %q", vi.HWVersion, c.kv[i+1])
				}
			case "cid":
				if vi.CID != 0xabcd {
					t.Errorf("glimpse reads CID %08x", vi.CID)
				}
			}
		}
		sub := vmdkMonolithicSparse
		if slicesContains(c.kv, vmdkStreamOptimized) {
			sub = vmdkStreamOptimized
		}
		jobs = append(jobs, func() []error {
			return vmdkCheckOutput(out, vmdkWant{sub: sub, src: p, srcFormat: "raw", sha: want, size: 40 << 20})
		})
	}
	vmdkParallel(t, jobs)
	// Without cid= the CID is random and never ffffffff.
	a, b := filepath.Join(dir, "a.vmdk"), filepath.Join(dir, "b.vmdk")
	for _, out := range []string{a, b} {
		w, err := Create(inspect.VMDK, out, nil, FormatOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(context.Background(), img, w, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if vmdkDescriptor(t, ba) == vmdkDescriptor(t, bb) {
		t.Error("two conversions without cid= have the same CID")
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestVMDKWriterZeroedGrain: zeroed_grain=on gives a version 2 header with the flag, and
// the zero grains of a table that holds data read as zeroed (GTE 1); tables with no data
// stay empty. qemu-img and glimpse read it as the source.
func TestVMDKWriterZeroedGrain(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	p, img := vmdkRawSource(t, dir, "src.raw", 70<<20, 64<<10, 66<<20)
	want, _ := qemutest.ConvertSHA256(t, p, "raw")
	out := filepath.Join(dir, "z.vmdk")
	vmdkWrite(t, img, out, nil, Options{}, "zeroed_grain", "on")
	vmdkVerify(t, out, vmdkMonolithicSparse, p, "raw", want, 70<<20)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if v, f := le.Uint32(b[4:]), le.Uint32(b[8:]); v != 2 || f != vmdkFlagNewline|vmdkFlagRGD|vmdkFlagZeroGrain {
		t.Fatalf("version %d flags %#x", v, f)
	}
	gd := int(le.Uint64(b[56:])) * 512
	gte := func(g int) uint32 {
		gt := int(le.Uint32(b[gd+4*(g/512):])) * 512
		return le.Uint32(b[gt+4*(g%512):])
	}
	// Table 0 holds grain 1 (64 KiB), table 1 (32-64 MiB) nothing, table 2 grain 1056
	// (66 MiB); the disk ends at grain 1120, inside table 2.
	for g, wantZeroed := range map[int]bool{0: true, 2: true, 511: true, 512: false, 700: false, 1023: false,
		1024: true, 1100: true, 1119: true, 1120: false, 1535: false} {
		if e := gte(g); (e == vmdkGTEZeroed) != wantZeroed || (!wantZeroed && e != 0) {
			t.Errorf("grain %d: GTE %d", g, e)
		}
	}
	if gte(1) <= 1 || gte(1056) <= 1 {
		t.Errorf("data grains: GTEs %d, %d", gte(1), gte(1056))
	}
}

// TestVMDKWriterOptionErrors: refused options and outputs, with messages that say why.
func TestVMDKWriterOptionErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.vmdk")
	cases := []struct {
		name     string
		out      string
		opts     map[string]string
		compress bool
		want     string
	}{
		{"unknown key", out, map[string]string{"cluster_size": "65536"}, false, "cluster_size"},
		{"subformat flat", out, map[string]string{"subformat": "monolithicFlat"}, false, "one file"},
		{"subformat typo", out, map[string]string{"subformat": "streamoptimized"}, false, "unknown subformat"},
		{"adapter", out, map[string]string{"adapter_type": "scsi"}, false, "unknown adapter"},
		{"hwversion low", out, map[string]string{"hwversion": "3"}, false, "4 to 21"},
		{"hwversion text", out, map[string]string{"hwversion": "x"}, false, "4 to 21"},
		{"compat6 and hwversion", out, map[string]string{"compat6": "on", "hwversion": "7"}, false, "exclude"},
		{"compat6 value", out, map[string]string{"compat6": "maybe"}, false, "on or off"},
		{"toolsversion", out, map[string]string{"toolsversion": "-1"}, false, "decimal"},
		{"cid long", out, map[string]string{"cid": "123456789"}, false, "hex"},
		{"cid none", out, map[string]string{"cid": "ffffffff"}, false, "no parent"},
		{"uuid", out, map[string]string{"uuid": "nope"}, false, "UUID"},
		{"extent name slash", out, map[string]string{"extent_name": "a/b.vmdk"}, false, "contains"},
		{"extent name quote", out, map[string]string{"extent_name": `a".vmdk`}, false, "contains"},
		{"extent name control", out, map[string]string{"extent_name": "a\nb"}, false, "control"},
		{"extent name UTF-8", out, map[string]string{"extent_name": "disque-é.vmdk"}, false, "ASCII"},
		{"output name colon", filepath.Join(dir, "c:d.vmdk"), nil, false, "extent_name"},
		{"grain size", out, map[string]string{"grain_size": "48k"}, false, "power of two"},
		{"grain size small", out, map[string]string{"grain_size": "2048"}, false, "power of two"},
		{"backing", out, map[string]string{"backing_file": "base.vmdk"}, false, "delta"},
		{"-c sparse", out, nil, true, "streamOptimized"},
		{"zeroed stream", out, map[string]string{"zeroed_grain": "on", "subformat": "streamOptimized"}, false, "monolithicSparse only"},
		{"sparse to stdout", "-", nil, false, "standard output"},
		{"directory", dir, nil, false, "not a regular file"},
	}
	for _, c := range cases {
		w, err := Create(inspect.VMDK, c.out, io.Discard, FormatOptions{Options: c.opts, Compress: c.compress})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one that says %q", c.name, err, c.want)
		}
		if w != nil {
			w.Abort()
		}
	}
	noOutput(t, dir)
	// The size limits are checked in Begin.
	for _, c := range []struct {
		size int64
		kv   map[string]string
	}{{vmdkMaxSize + 512, nil}, {8<<40 + 512, map[string]string{"grain_size": "4k"}}, {0, nil}} {
		w, err := Create(inspect.VMDK, out, nil, FormatOptions{Options: c.kv})
		if err != nil {
			t.Fatal(err)
		}
		f := &fakeImage{size: c.size, extents: []inspect.Extent{{Start: 0, Length: c.size, Kind: inspect.KindHole, Offset: -1}}}
		if err := Convert(context.Background(), f, w, Options{}); err == nil || !strings.Contains(err.Error(), "limit") && !strings.Contains(err.Error(), "empty") {
			t.Errorf("size %d: error %v", c.size, err)
		}
	}
	noOutput(t, dir)
}

// failingVMDK fails the Write of the chunk that covers at (a disk-full stand-in after
// some output has gone out).
type failingVMDK struct {
	Writer
	at int64
}

func (f failingVMDK) Write(c *Chunk) error {
	if !c.Zero() && c.Off+c.Len > f.at {
		return errFakeWrite
	}
	return f.Writer.Write(c)
}

func (f failingVMDK) Encode(c *Chunk) error {
	if e, ok := f.Writer.(Encoder); ok {
		return e.Encode(c)
	}
	return nil
}

// TestVMDKWriterFailures: write and read errors and cancellation leave nothing under the
// output name (and an older file there untouched); a full disk is a clear error.
func TestVMDKWriterFailures(t *testing.T) {
	f := newFake(inspect.KindData, 3<<20, inspect.KindHole, 40<<20, inspect.KindData, 2<<20+512)
	for _, sub := range vmdkSubformats {
		t.Run(sub+"/write error", func(t *testing.T) {
			dir := t.TempDir()
			old := filepath.Join(dir, "out.vmdk")
			if err := os.WriteFile(old, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			w, err := Create(inspect.VMDK, old, nil, FormatOptions{Options: map[string]string{"subformat": sub}})
			if err != nil {
				t.Fatal(err)
			}
			if err := Convert(context.Background(), f, failingVMDK{w, 44 << 20}, Options{}); !errors.Is(err, errFakeWrite) {
				t.Fatalf("error %v", err)
			}
			noOutput(t, dir, "out.vmdk")
			if b, _ := os.ReadFile(old); string(b) != "old" {
				t.Fatal("the old output changed")
			}
		})
		t.Run(sub+"/read error", func(t *testing.T) {
			dir := t.TempDir()
			g := f.clone()
			g.readHook = func(p []byte, off int64) error {
				if off >= 43<<20 {
					return errFakeRead
				}
				return nil
			}
			w, err := Create(inspect.VMDK, filepath.Join(dir, "out.vmdk"), nil, FormatOptions{Options: map[string]string{"subformat": sub}})
			if err != nil {
				t.Fatal(err)
			}
			if err := Convert(context.Background(), g, w, Options{Workers: 2}); !errors.Is(err, errFakeRead) {
				t.Fatalf("error %v", err)
			}
			noOutput(t, dir)
		})
		t.Run(sub+"/cancel", func(t *testing.T) {
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
			w, err := Create(inspect.VMDK, filepath.Join(dir, "out.vmdk"), nil, FormatOptions{Options: map[string]string{"subformat": sub}})
			if err != nil {
				t.Fatal(err)
			}
			if err := Convert(ctx, g, w, Options{Workers: 2, ChunkSize: 256 << 10}); !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v", err)
			}
			noOutput(t, dir)
		})
	}
	t.Run("stream to a full device", func(t *testing.T) {
		full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
		if err != nil {
			t.Skip("/dev/full:", err)
		}
		defer full.Close()
		w, err := Create(inspect.VMDK, "-", full, FormatOptions{Options: map[string]string{"subformat": vmdkStreamOptimized}})
		if err != nil {
			t.Fatal(err)
		}
		err = Convert(context.Background(), f, w, Options{})
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "standard output") {
			t.Fatalf("error %v, want a clear disk-full error", err)
		}
	})
	t.Run("file on a full file system", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
			t.Skipf("cannot mount a tmpfs to fill (%v); the failing writer covers the file writers", err)
		}
		defer syscall.Unmount(dir, 0)
		// random data, which does not compress into the 1 MiB file system
		at := make([]int64, 0, 4096)
		for off := int64(0); off < 2<<20; off += 512 {
			at = append(at, off)
		}
		_, rnd := vmdkRawSource(t, t.TempDir(), "random.raw", 2<<20, at...)
		for _, sub := range vmdkSubformats {
			w, err := Create(inspect.VMDK, filepath.Join(dir, "out.vmdk"), nil, FormatOptions{Options: map[string]string{"subformat": sub}})
			if err != nil {
				t.Fatal(err)
			}
			err = Convert(context.Background(), rnd, w, Options{})
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "out.vmdk") {
				t.Fatalf("%s: error %v, want a clear disk-full error naming the output", sub, err)
			}
			noOutput(t, dir)
		}
	})
}

// TestVMDKWriterContract: chunks out of order or off grain boundaries are internal errors,
// Commit checks that the whole disk came, Abort is idempotent.
func TestVMDKWriterContract(t *testing.T) {
	for _, sub := range vmdkSubformats {
		dir := t.TempDir()
		w, err := Create(inspect.VMDK, filepath.Join(dir, "out.vmdk"), nil, FormatOptions{Options: map[string]string{"subformat": sub}})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err == nil {
			t.Errorf("%s: Commit before Begin", sub)
		}
		l, err := w.Begin(1 << 20)
		if err != nil || !l.Ordered || l.BlockSize != 64<<10 {
			t.Fatalf("%s: Begin: %+v, %v", sub, l, err)
		}
		data := make([]byte, 64<<10)
		for _, c := range []Chunk{{Off: 64 << 10, Len: 64 << 10}, {Off: 0, Len: 1000, Data: data[:1000]}, {Off: 0, Len: 2 << 20}} {
			if err := w.Write(&c); err == nil || !strings.Contains(err.Error(), "internal error") {
				t.Errorf("%s: %v: error %v", sub, &c, err)
			}
		}
		if err := w.Write(&Chunk{Off: 0, Len: 64 << 10}); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err == nil || !strings.Contains(err.Error(), "end at guest offset") {
			t.Errorf("%s: Commit of half a disk: %v", sub, err)
		}
		w.Abort()
		w.Abort()
		noOutput(t, dir)
	}
	// A file that would pass 2 TiB (32-bit sector offsets) is refused, not wrapped.
	dir := t.TempDir()
	for _, sub := range vmdkSubformats {
		w, err := Create(inspect.VMDK, filepath.Join(dir, "out.vmdk"), nil, FormatOptions{Options: map[string]string{"subformat": sub}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Begin(1 << 20); err != nil {
			t.Fatal(err)
		}
		switch x := w.(type) {
		case *vmdkSparseWriter:
			x.next = vmdkMaxSector - 100
		case *vmdkStreamWriter:
			x.pos = vmdkMaxSector * vmdkSectorSize
		}
		data := bytes.Repeat([]byte{1}, 64<<10)
		if err := w.Write(&Chunk{Off: 0, Len: 64 << 10, Data: data}); err == nil || !strings.Contains(err.Error(), "2 TiB") {
			t.Errorf("%s: error %v", sub, err)
		}
		w.Abort()
	}
	noOutput(t, dir)
}

// FuzzVMDKWriterOptions: whatever -o list the writer accepts, the file it makes opens in
// glimpse with no findings, a clean check and the disk's content.
func FuzzVMDKWriterOptions(f *testing.F) {
	for _, s := range []string{"", "subformat=streamOptimized", "adapter_type=lsilogic,hwversion=21,toolsversion=1",
		"extent_name=e u.vmdk,uuid=00000000000000000000000000000000", "compat6=on,zeroed_grain=on", "grain_size=4k,cid=0",
		"extent_name=#,cid=1", "extent_name= x ", "extent_name=a=b", "extent_name=RW 1 SPARSE x"} {
		f.Add(s)
	}
	src := newFake(inspect.KindData, 64<<10, inspect.KindHole, 1<<20, inspect.KindData, 1024)
	want := src.want()
	f.Fuzz(func(t *testing.T, list string) {
		opts := map[string]string{}
		if ParseOptionList(list, opts) != nil {
			return
		}
		if _, ok := opts["cid"]; !ok {
			opts["cid"] = "1"
		}
		dir := t.TempDir()
		w, err := Create(inspect.VMDK, filepath.Join(dir, "out.vmdk"), nil, FormatOptions{Options: opts})
		if err != nil {
			return
		}
		if err := Convert(context.Background(), src, w, Options{}); err != nil {
			t.Fatalf("%q: %v", list, err)
		}
		img, err := inspect.OpenFile(filepath.Join(dir, "out.vmdk"), inspect.OpenOptions{})
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
		if !bytes.Equal(got[:len(want)], want) || !isZero(got[len(want):]) {
			t.Fatalf("%q: content differs", list)
		}
	})
}

// vmdkBenchSource writes a raw disk of n bytes: a third random, a third text, a third
// zeros, in 1 MiB stripes, like a used file system.
func vmdkBenchSource(b *testing.B, n int64) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), "bench.raw")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(9, 9))
	text := []byte(strings.Repeat("the grain table of a stream follows its grains; ", 1<<15))
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
	return p
}

// BenchmarkWriteVMDK converts a 384 MiB raw disk to each subformat.
func BenchmarkWriteVMDK(b *testing.B) {
	src := vmdkBenchSource(b, 384<<20)
	img, err := inspect.OpenFile(src, inspect.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	for _, sub := range vmdkSubformats {
		b.Run(sub, func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "out.vmdk")
			b.SetBytes(img.Size())
			for b.Loop() {
				vmdkWrite(b, img, out, nil, Options{}, "subformat", sub)
			}
		})
	}
}
