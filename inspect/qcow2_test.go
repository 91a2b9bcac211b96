package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"glimpse/internal/qemutest"
)

const qcow2Secret = "secret,id=sec0,data=glimpse"

// qcow2Odd writes data where readers go wrong: the first and the last sector, across a
// cluster boundary, unaligned runs, the partial last cluster, zero writes over data, and
// discards.
func qcow2Odd(t testing.TB, p string, size, cs int64) {
	t.Helper()
	qemutest.IO(t, p, "qcow2", qcow2OddCmds(size, cs)...)
}

// qcow2OddCmds are qcow2Odd's qemu-io commands.
func qcow2OddCmds(size, cs int64) []string {
	cmds := []string{
		"write -P 0x11 0 512",
		fmt.Sprintf("write -P 0x22 %d 1024", cs-512),
		fmt.Sprintf("write -P 0x33 %d 512", size-512),
		fmt.Sprintf("write -P 0x44 %d %d", 3*cs+512, 2*cs+1024),
		fmt.Sprintf("write -z %d %d", 4*cs, cs),
		fmt.Sprintf("write -P 0x55 %d %d", 8*cs, 3*cs),
		fmt.Sprintf("discard %d %d", 9*cs, cs),
		fmt.Sprintf("write -P 0x66 %d %d", size-cs-4096, cs),
		fmt.Sprintf("write -z %d 4096", 12*cs+1024),
	}
	return cmds
}

// qcow2IOArgs turns qemu-io commands into arguments.
func qcow2IOArgs(cmds []string) []string {
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return args
}

// qcow2RunIn runs a qemu tool in dir and returns its standard output.
func qcow2RunIn(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	qemutest.Need(t, name)
	out, err := qcow2OutputIn(dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func qcow2OutputIn(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// qcow2CompareGuest is compareGuestWithQemu with qemu-img run in the image's directory
// (where qemu finds a relative external data file).
func qcow2CompareGuest(t *testing.T, path string, img Image) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	qcow2RunIn(t, filepath.Dir(path), "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", path, out)
	want, size := qemutest.FileSHA256(t, out)
	if img.Size() != size {
		t.Fatalf("%s: size %d, qemu-img converts %d bytes", path, img.Size(), size)
	}
	if got := guestSHA256(t, img); got != want {
		t.Fatalf("%s: guest SHA-256 %s, qemu-img gives %s", path, got, want)
	}
}

// qcow2OddSize is a virtual size that is not a multiple of the cluster size.
func qcow2OddSize(cs int64) int64 { return 20*cs + 1536 }

// qcow2Fixtures builds every qcow2 variant qemu-img writes, with data in odd places, and
// the readable third-party samples.
func qcow2Fixtures(t testing.TB, dir string) []fixture {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	var out []fixture
	add := func(fx fixture) { out = append(out, fx) }
	plain := func(name string, cs int64, opts ...string) string {
		size := qcow2OddSize(cs)
		p := qemutest.Create(t, dir, name+".qcow2", "qcow2", fmt.Sprint(size), opts...)
		qcow2Odd(t, p, size, cs)
		add(fixture{name: "qcow2/" + name, path: p, format: QCOW2, readable: true})
		return p
	}
	plain("v2-64k", 64<<10, "compat=0.10")
	v3 := plain("v3-64k", 64<<10)
	plain("v2-512", 512, "compat=0.10", "cluster_size=512")
	plain("v3-512", 512, "cluster_size=512")
	plain("v3-4k", 4<<10, "cluster_size=4096")
	plain("v3-2m", 2<<20, "cluster_size=2097152")
	plain("extl2-16k", 16<<10, "extended_l2=on", "cluster_size=16384")
	plain("extl2-64k", 64<<10, "extended_l2=on")
	plain("extl2-2m", 2<<20, "extended_l2=on", "cluster_size=2097152")
	plain("lazy-refcounts", 64<<10, "lazy_refcounts=on")
	plain("refcount-1", 64<<10, "refcount_bits=1")
	plain("refcount-64", 4<<10, "refcount_bits=64", "cluster_size=4096")
	plain("prealloc-metadata", 64<<10, "preallocation=metadata")
	plain("prealloc-full", 64<<10, "preallocation=full")
	plain("prealloc-metadata-extl2", 64<<10, "preallocation=metadata", "extended_l2=on")

	// Compressed clusters written by qemu-io (zstd) and by qemu-img convert -c.
	{
		cs := int64(64 << 10)
		size := qcow2OddSize(cs)
		p := qemutest.Create(t, dir, "zstd-io.qcow2", "qcow2", fmt.Sprint(size), "compression_type=zstd")
		qemutest.IO(t, p, "qcow2", "write -c -P 0x77 0 64k", fmt.Sprintf("write -c -P 0x78 %d 64k", 5*cs), "write -P 0x79 65536 4096")
		add(fixture{name: "qcow2/zstd-io", path: p, format: QCOW2, readable: true})
	}
	src := filepath.Join(dir, "mixed.raw")
	qcow2MixedRaw(t, src, 3<<20+4096)
	for _, v := range []struct {
		name string
		opts string
	}{
		{"compressed-zlib", "compression_type=zlib"},
		{"compressed-zstd", "compression_type=zstd"},
		{"compressed-512", "cluster_size=512"},
		{"compressed-2m", "cluster_size=2097152"},
		{"compressed-zstd-4k", "compression_type=zstd,cluster_size=4096"},
		{"compressed-extl2", "extended_l2=on,compression_type=zstd"},
		{"compressed-v2", "compat=0.10"},
	} {
		p := filepath.Join(dir, v.name+".qcow2")
		qemutest.Img(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", v.opts, src, p)
		add(fixture{name: "qcow2/" + v.name, path: p, format: QCOW2, readable: true})
	}
	{
		p := filepath.Join(dir, "converted.qcow2")
		qemutest.Img(t, "convert", "-f", "raw", "-O", "qcow2", src, p)
		add(fixture{name: "qcow2/converted", path: p, format: QCOW2, readable: true})
	}

	// Internal snapshots, then more writes: the active layer is read.
	{
		cs := int64(64 << 10)
		size := qcow2OddSize(cs)
		p := qemutest.Create(t, dir, "snapshots.qcow2", "qcow2", fmt.Sprint(size))
		qemutest.IO(t, p, "qcow2", "write -P 0x01 0 256k")
		qemutest.Img(t, "snapshot", "-c", "first", p)
		qcow2Odd(t, p, size, cs)
		qemutest.Img(t, "snapshot", "-c", "second snapshot", p)
		qemutest.IO(t, p, "qcow2", "write -P 0x02 65536 131072", "discard 0 65536")
		add(fixture{name: "qcow2/snapshots", path: p, format: QCOW2, readable: true})
	}

	// Persistent bitmaps.
	{
		p := qemutest.Create(t, dir, "bitmaps.qcow2", "qcow2", "4M")
		qemutest.IO(t, p, "qcow2", "write -P 0x0b 0 1M")
		qemutest.Img(t, "bitmap", "--add", p, "b0")
		qemutest.Img(t, "bitmap", "--add", "-g", "512k", p, "other")
		add(fixture{name: "qcow2/bitmaps", path: p, format: QCOW2, readable: true})
	}

	// Backing files: qcow2 and raw, the overlay larger than its backing file, offset 0
	// unallocated in the overlay.
	{
		base := qemutest.Create(t, dir, "base.qcow2", "qcow2", "5M")
		qemutest.IO(t, base, "qcow2", "write -P 0x61 0 1M", "write -P 0x62 4M 512k")
		top := filepath.Join(dir, "overlay.qcow2")
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "8M")
		qemutest.IO(t, top, "qcow2", "write -P 0x63 512k 1M", "write -z 4M 64k", "write -P 0x64 6M 4096")
		add(fixture{name: "qcow2/base", path: base, format: QCOW2, readable: true})
		add(fixture{name: "qcow2/overlay", path: top, format: QCOW2, findings: []string{FindBackingFile}})

		rawBase := filepath.Join(dir, "base.raw")
		qemutest.Img(t, "create", "-q", "-f", "raw", rawBase, "3M")
		qemutest.IO(t, rawBase, "raw", "write -P 0x65 0 3M")
		top2 := filepath.Join(dir, "overlay-raw.qcow2")
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", top2, "4M")
		qemutest.IO(t, top2, "qcow2", "write -P 0x66 1M 4096")
		add(fixture{name: "qcow2/overlay-raw-v2", path: top2, format: QCOW2, findings: []string{FindBackingFile}})
	}

	// External data files.
	for _, raw := range []bool{false, true} {
		name := "data-file"
		opts := []string{"data_file=" + name + ".bin"}
		if raw {
			name = "data-file-raw"
			opts = []string{"data_file=" + name + ".bin", "data_file_raw=on"}
		}
		cs := int64(64 << 10)
		size := qcow2OddSize(cs)
		// qemu resolves a relative data_file against its working directory (not the
		// image's): every qemu tool runs in the image's directory for these.
		p := filepath.Join(dir, name+".qcow2")
		qcow2RunIn(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-o", strings.Join(opts, ","), p, fmt.Sprint(size))
		qcow2RunIn(t, dir, "qemu-io", append([]string{"-f", "qcow2"}, append(qcow2IOArgs(qcow2OddCmds(size, cs)), p)...)...)
		add(fixture{name: "qcow2/" + name, path: p, format: QCOW2, findings: []string{FindDataFile}})
	}

	// Encryption: Info works, reads are refused.
	for _, f := range []string{"luks", "aes"} {
		p := filepath.Join(dir, "enc-"+f+".qcow2")
		opts := "encrypt.format=" + f + ",encrypt.key-secret=sec0"
		if f == "luks" {
			opts += ",encrypt.iter-time=10"
		}
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "--object", qcow2Secret, "-o", opts, p, "2M")
		qemutest.Run(t, "qemu-io", "--object", qcow2Secret, "--image-opts", "driver=qcow2,file.filename="+p+",encrypt.key-secret=sec0", "-c", "write -P 0x42 0 64k")
		add(fixture{name: "qcow2/enc-" + f, path: p, format: QCOW2, findings: []string{FindEncrypted}})
	}

	// Header bits set by hand: corrupt, dirty, an unknown incompatible feature.
	{
		p := qcow2CopyT(t, v3, dir, "corrupt-bit.qcow2")
		qcow2OrIncompat(t, p, qcow2IncompatCorrupt)
		add(fixture{name: "qcow2/corrupt-bit", path: p, format: QCOW2, findings: []string{FindCorrupt}, readable: true})
		p = qcow2CopyT(t, v3, dir, "dirty-bit.qcow2")
		qcow2OrIncompat(t, p, qcow2IncompatDirty)
		add(fixture{name: "qcow2/dirty-bit", path: p, format: QCOW2, readable: true})
		p = qcow2CopyT(t, v3, dir, "unknown-feature.qcow2")
		qcow2OrIncompat(t, p, 1<<40)
		add(fixture{name: "qcow2/unknown-feature", path: p, qemuFormat: "-", format: QCOW2, findings: []string{FindUnknownFeature}})
	}

	if qemutest.SharedDirOrEmpty() != "" {
		for _, s := range []string{"basic", "basic-zstd", "snapshot"} {
			add(fixture{name: "qcow2/dissect-" + s, path: qemutest.ThirdParty(t, "dissect.hypervisor/disk/qcow2/"+s+".qcow2.gz"), format: QCOW2, readable: true})
		}
	}
	return out
}

// qcow2MixedRaw writes a raw file of partly random, partly repetitive, partly zero data,
// so that compression has work to do.
func qcow2MixedRaw(t testing.TB, path string, size int64) {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for off := int64(0); off < size; off += 64 << 10 {
		end := min(size, off+64<<10)
		switch (off >> 16) % 4 {
		case 0:
			for i := off; i < end; i++ {
				b[i] = byte(r.Uint32())
			}
		case 1:
			copy(b[off:end], bytes.Repeat([]byte("glimpse reads qcow2 "), 4000))
		case 2: // zeros
		case 3:
			for i := off; i < end; i += 2 {
				b[i] = byte(r.Uint32() & 7)
			}
		}
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func qcow2CopyT(t testing.TB, src, dir, name string) string {
	t.Helper()
	return qemutest.CopyTo(t, src, dir, name)
}

// qcow2Patch writes b at off in the file.
func qcow2Patch(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func qcow2Get64(t testing.TB, path string, off int64) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b[:])
}

func qcow2Put64(t testing.TB, path string, off int64, v uint64) {
	t.Helper()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	qcow2Patch(t, path, off, b[:])
}

func qcow2Put32(t testing.TB, path string, off int64, v uint32) {
	t.Helper()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	qcow2Patch(t, path, off, b[:])
}

func qcow2OrIncompat(t testing.TB, path string, bits uint64) {
	t.Helper()
	qcow2Put64(t, path, 72, qcow2Get64(t, path, 72)|bits)
}

// qcow2QemuCheck is `qemu-img check --output=json` (the exit status says what was found;
// the JSON says how much).
type qcow2QemuCheck struct {
	CheckErrors        int   `json:"check-errors"`
	Corruptions        int   `json:"corruptions"`
	Leaks              int   `json:"leaks"`
	ImageEndOffset     int64 `json:"image-end-offset"`
	TotalClusters      int64 `json:"total-clusters"`
	AllocatedClusters  int64 `json:"allocated-clusters"`
	FragmentedClusters int64 `json:"fragmented-clusters"`
	CompressedClusters int64 `json:"compressed-clusters"`
}

func qcow2RunQemuCheck(t testing.TB, path string, encrypted bool) qcow2QemuCheck {
	t.Helper()
	args := []string{"check", "--output=json", "-U"}
	if encrypted {
		args = append(args, "--object", qcow2Secret, "--image-opts", "driver=qcow2,file.filename="+path+",encrypt.key-secret=sec0")
	} else {
		args = append(args, "-f", "qcow2", path)
	}
	out, err := qcow2OutputIn(filepath.Dir(path), "qemu-img", args...)
	var q qcow2QemuCheck
	if jerr := json.Unmarshal([]byte(out), &q); jerr != nil {
		t.Fatalf("qemu-img check %s: %v / %v\n%s", path, err, jerr, out)
	}
	return q
}

// qcow2CompareCheck compares glimpse's Check with qemu-img check's counts.
func qcow2CompareCheck(t *testing.T, path string, img Image, encrypted bool) Report {
	t.Helper()
	q := qcow2RunQemuCheck(t, path, encrypted)
	r := img.Check()
	got := qcow2QemuCheck{r.CheckErrors, r.Corruptions, r.Leaks, r.ImageEndOffset, r.TotalClusters, r.AllocatedClusters, r.FragmentedClusters, r.CompressedClusters}
	if got != q {
		t.Errorf("check %s:\n glimpse %+v\n qemu    %+v\nproblems: %v", filepath.Base(path), got, q, qcow2Problems(r))
	}
	return r
}

func qcow2Problems(r Report) string {
	var b strings.Builder
	for i, p := range r.Problems {
		if i == 20 {
			fmt.Fprintf(&b, "\n  … %d more", len(r.Problems)-i)
			break
		}
		fmt.Fprintf(&b, "\n  %s %s@%d: %s", p.Kind, p.Structure, p.Offset, p.Message)
	}
	return b.String()
}

// qcow2CompareSpecific compares the format-specific keys qemu-img prints with glimpse's.
func qcow2CompareSpecific(t *testing.T, path string, info Info, q qemutest.ImgInfo) {
	t.Helper()
	var qs struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(q.FormatSpecific, &qs); err != nil {
		t.Fatalf("qemu-img format-specific: %v", err)
	}
	ours, err := json.Marshal(info.FormatSpecific.Data)
	if err != nil {
		t.Fatal(err)
	}
	var os map[string]json.RawMessage
	if err := json.Unmarshal(ours, &os); err != nil {
		t.Fatal(err)
	}
	for k, qv := range qs.Data {
		ov, ok := os[k]
		if !ok {
			t.Errorf("%s: format-specific %q missing (qemu-img: %s)", path, k, qv)
			continue
		}
		var a, b any
		json.Unmarshal(qv, &a)
		json.Unmarshal(ov, &b)
		if k == "encrypt" {
			a, b = a.(map[string]any)["format"], b.(map[string]any)["format"]
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: format-specific %q = %s, qemu-img says %s", path, k, ov, qv)
		}
	}
}

func TestQCOW2Fixtures(t *testing.T) {
	dir := t.TempDir()
	for _, fx := range qcow2Fixtures(t, dir) {
		t.Run(fx.name, func(t *testing.T) {
			t.Parallel()
			img := openT(t, fx.path, OpenOptions{})
			info := img.Info()
			if info.Format != fx.format {
				t.Fatalf("format %s, want %s", info.Format, fx.format)
			}
			var codes []string
			for _, f := range img.Safety() {
				codes = append(codes, f.Code)
			}
			if !slices.Equal(codes, fx.findings) {
				t.Errorf("findings %v, want %v (%v)", codes, fx.findings, img.Safety())
			}
			if fx.readable {
				validate(t, img)
			} else {
				buf := make([]byte, min(img.Size(), 1<<20))
				if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrNotAllowed) && !errors.Is(err, ErrUnsupported) {
					t.Fatalf("ReadAt of an unreadable image: %v, want ErrNotAllowed or ErrUnsupported", err)
				}
			}
			qcow2CompareStream(t, fx.path)
			if data, err := os.ReadFile(fx.path); err == nil {
				fuzzOpen(t, data[:min(len(data), 1<<20)], QCOW2)
			}
			if fx.qemuFormat == "-" {
				return
			}
			compareWithQemu(t, fx.path, fx.qemuFormat, info)
			q := qemutest.Info(t, fx.path, fx.qemuFormat)
			if info.ClusterSize != q.ClusterSize || info.DirtyFlag != q.DirtyFlag || info.Encrypted != q.Encrypted || info.BackingFormat != q.BackingFormat {
				t.Errorf("info %+v, qemu-img says %+v", info, q)
			}
			qcow2CompareSpecific(t, fx.path, info, q)
			encrypted := slices.Contains(fx.findings, FindEncrypted)
			if strings.HasPrefix(fx.name, "qcow2/dissect-") {
				// TestQCOW2ThirdParty checks their guest bytes against the MANIFEST.
			} else if fx.readable {
				compareGuestWithQemu(t, fx.path, fx.qemuFormat, img)
			} else if !encrypted {
				// Following the other files, glimpse reads what qemu reads.
				img2 := openT(t, fx.path, OpenOptions{AllowBacking: true})
				validate(t, img2)
				qcow2CompareGuest(t, fx.path, img2)
			}
			r := qcow2CompareCheck(t, fx.path, img, encrypted)
			if !slices.Contains(fx.findings, FindCorrupt) && !info.DirtyFlag && !r.Clean() {
				t.Errorf("check of a clean image: %s", qcow2Problems(r))
			}
		})
	}
}

// TestQCOW2Info checks the detail glimpse adds beyond qemu-img's: features, snapshots,
// extensions, bitmaps, encryption.
func TestQCOW2Info(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := qemutest.Create(t, dir, "i.qcow2", "qcow2", "16M", "lazy_refcounts=on", "compression_type=zstd", "extended_l2=on")
	qemutest.IO(t, p, "qcow2", "write -P 1 0 64k")
	qemutest.Img(t, "snapshot", "-c", "alpha", p)
	qemutest.Img(t, "snapshot", "-c", "beta", p)
	qemutest.Img(t, "bitmap", "--add", p, "bm")
	img := openT(t, p, OpenOptions{})
	in := img.Info().FormatSpecific.Data.(*QCOW2Info)
	if in.Version != 3 || in.ClusterBits != 16 || in.RefcountOrder != 4 || in.HeaderLength != 112 || in.EncryptionMethod != "none" {
		t.Errorf("header: %+v", in)
	}
	if !slices.Contains(in.IncompatibleFeatures.Names, "compression type") || !slices.Contains(in.IncompatibleFeatures.Names, "extended L2 entries") || in.IncompatibleFeatures.Unknown != 0 {
		t.Errorf("incompatible features %+v", in.IncompatibleFeatures)
	}
	if !slices.Equal(in.CompatibleFeatures.Names, []string{"lazy refcounts"}) || !slices.Equal(in.AutoclearFeatures.Names, []string{"bitmaps"}) {
		t.Errorf("features %+v %+v", in.CompatibleFeatures, in.AutoclearFeatures)
	}
	if in.SnapshotCount != 2 || len(in.Snapshots) != 2 || in.Snapshots[0].Name != "alpha" || in.Snapshots[1].ID != "2" || in.Snapshots[1].DiskSize != 16<<20 {
		t.Errorf("snapshots %+v", in.Snapshots)
	}
	if len(in.FeatureNameTable) == 0 {
		t.Error("no feature name table")
	}
	var types []string
	for _, e := range in.Extensions {
		types = append(types, e.Name)
	}
	for _, want := range []string{"feature name table", "bitmaps"} {
		if !slices.Contains(types, want) {
			t.Errorf("extensions %v lack %q", types, want)
		}
	}
	if len(in.Bitmaps) != 1 || in.Bitmaps[0].Name != "bm" {
		t.Errorf("bitmaps %+v", in.Bitmaps)
	}
	if _, err := json.Marshal(img.Info()); err != nil {
		t.Fatal(err)
	}

	qemutest.Img(t, "create", "-q", "-f", "qcow2", "--object", qcow2Secret, "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", filepath.Join(dir, "e.qcow2"), "1M")
	ei := openT(t, filepath.Join(dir, "e.qcow2"), OpenOptions{}).Info()
	enc := ei.FormatSpecific.Data.(*QCOW2Info).Encrypt
	if !ei.Encrypted || enc.Format != "luks" || enc.CipherAlg != "aes-256" || enc.CipherMode != "xts" || enc.IVGenAlg != "plain64" || enc.HashAlg != "sha256" || enc.UUID == "" || enc.PayloadOffset == 0 {
		t.Errorf("encryption %+v", enc)
	}
}

// TestQCOW2ThirdParty: the dissect.hypervisor samples give the MANIFEST's raw SHA-256.
func TestQCOW2ThirdParty(t *testing.T) {
	qemutest.SharedDir(t)
	const basicSHA = "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f"
	tp := func(name string) string { return qemutest.ThirdParty(t, "dissect.hypervisor/disk/qcow2/"+name+".gz") }
	for _, c := range []struct{ name, sha string }{
		{"basic.qcow2", basicSHA},
		{"basic-zstd.qcow2", basicSHA},
		{"snapshot.qcow2", "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767"},
		{"backing-chain-3.qcow2", "4a57a3a5c273c7c1144743ecafc7b23181f6e23c8abad104493a63a3599bd276"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := openT(t, tp(c.name), OpenOptions{})
			if got := guestSHA256(t, img); got != c.sha {
				t.Errorf("guest SHA-256 %s, want %s", got, c.sha)
			}
			if r := img.Check(); !r.Clean() {
				t.Errorf("check: %s", qcow2Problems(r))
			}
			if len(img.Safety()) != 0 {
				t.Errorf("findings %v", img.Safety())
			}
		})
	}
	t.Run("snapshot-names", func(t *testing.T) {
		in := openT(t, tp("snapshot.qcow2"), OpenOptions{}).Info().FormatSpecific.Data.(*QCOW2Info)
		if len(in.Snapshots) != 2 || in.Snapshots[0].Name != "you can't see me" || in.Snapshots[1].Name != "confused" || in.Snapshots[1].ID != "2" {
			t.Errorf("snapshots %+v", in.Snapshots)
		}
	})

	// The backing chain and the data file need their other files beside them.
	dir := t.TempDir()
	for _, n := range []string{"backing-chain-1.qcow2", "backing-chain-2.qcow2", "backing-chain-3.qcow2", "data-file.qcow2", "data-file.bin"} {
		qemutest.CopyTo(t, tp(n), dir, n)
	}
	for _, c := range []struct{ name, sha, finding string }{
		{"backing-chain-1.qcow2", "186334af67c1acb54b08ded0b6a419571000755d4c810c8b768a30281e2ab074", FindBackingFile},
		{"backing-chain-2.qcow2", "8e2e850f2a31828f6f053f70f1fbfa71a42ce0571c6d8cd2a7ca0e21e1db8341", FindBackingFile},
		{"data-file.qcow2", basicSHA, FindDataFile},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			img := openT(t, p, OpenOptions{AllowBacking: true})
			if got := guestSHA256(t, img); got != c.sha {
				t.Errorf("guest SHA-256 %s, want %s", got, c.sha)
			}
			validate(t, img)
			if !hasFinding(img.Safety(), c.finding) {
				t.Errorf("findings %v lack %s", img.Safety(), c.finding)
			}
			if r := img.Check(); !r.Clean() {
				t.Errorf("check: %s", qcow2Problems(r))
			}
			// Without AllowBacking: described, findings, reads refused.
			img = openT(t, p, OpenOptions{})
			if !hasFinding(img.Safety(), c.finding) {
				t.Errorf("findings %v lack %s", img.Safety(), c.finding)
			}
			buf := make([]byte, 4<<20)
			if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrNotAllowed) {
				t.Errorf("ReadAt without AllowBacking: %v, want ErrNotAllowed", err)
			}
		})
	}
	t.Run("chain-depth", func(t *testing.T) {
		img := openT(t, filepath.Join(dir, "backing-chain-1.qcow2"), OpenOptions{AllowBacking: true, MaxChainDepth: 1})
		if _, err := io.Copy(io.Discard, io.NewSectionReader(img, 0, img.Size())); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("read through a chain deeper than allowed: %v, want ErrNotAllowed", err)
		}
	})
}

// TestQCOW2Confinement: backing files outside the image's directory, and chains that loop,
// are refused with ErrNotAllowed; the images still open and describe themselves.
func TestQCOW2Confinement(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	root := t.TempDir()
	outside := filepath.Join(root, "outside")
	inside := filepath.Join(root, "images")
	for _, d := range []string{outside, inside, filepath.Join(inside, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := qemutest.Create(t, outside, "secret.qcow2", "qcow2", "1M")
	qemutest.IO(t, secret, "qcow2", "write -P 0x5a 0 1M")
	overlay := func(name, backing string) string {
		p := filepath.Join(inside, name)
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2", p, "1M")
		return p
	}
	if err := os.Symlink(secret, filepath.Join(inside, "link.qcow2")); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"absolute": overlay("abs.qcow2", secret),
		"dotdot":   overlay("dotdot.qcow2", "../outside/secret.qcow2"),
		"symlink":  overlay("symlink.qcow2", "link.qcow2"),
		"self":     overlay("self.qcow2", "self.qcow2"),
	}
	a := overlay("loop-a.qcow2", "loop-b.qcow2")
	overlay("loop-b.qcow2", "loop-a.qcow2")
	cases["loop"] = a
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			img := openT(t, p, OpenOptions{AllowBacking: true})
			if !hasFinding(img.Safety(), FindBackingFile) {
				t.Errorf("findings %v", img.Safety())
			}
			buf := make([]byte, 4096)
			if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("ReadAt: %v, want ErrNotAllowed", err)
			}
			if _, err := img.Extent(0, 0); !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("Extent: %v, want ErrNotAllowed", err)
			}
		})
	}
	if f := hasFinding(openT(t, cases["absolute"], OpenOptions{}).Safety(), FindBackingFile); !f {
		t.Error("no finding")
	}
	for _, f := range openT(t, cases["absolute"], OpenOptions{}).Safety() {
		if f.Code == FindBackingFile && !strings.Contains(f.Message, "absolute") {
			t.Errorf("finding does not say the path is absolute: %s", f.Message)
		}
	}
}

// TestQCOW2CheckCorruptions damages images on purpose and compares Check's counts with
// qemu-img check's.
func TestQCOW2CheckCorruptions(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	type layout struct {
		cs, l1, reft, rb int64
		l2               int64 // first L2 table
	}
	mk := func(name string, opts ...string) (string, layout) {
		p := qemutest.Create(t, dir, name, "qcow2", "8M", opts...)
		qemutest.IO(t, p, "qcow2", "write -P 1 0 4M")
		img := openT(t, p, OpenOptions{})
		c := img.(*disk).c.(*qcow2Core)
		var l layout
		l.cs, l.l1, l.reft = c.cs, int64(c.h.l1Off), int64(c.h.refTableOff)
		l.rb = int64(qcow2Get64(t, p, l.reft) & qcow2RefOffsetMask)
		l.l2 = int64(qcow2Get64(t, p, l.l1) & qcow2L1OffsetMask)
		return p, l
	}
	l2e := func(p string, l layout, i int64) int64 { return l.l2 + 8*i }
	host := func(p string, l layout, i int64) uint64 { return qcow2Get64(t, p, l2e(p, l, i)) & qcow2L2OffsetMask }
	setRef := func(p string, l layout, cluster int64, v uint16) {
		var b [2]byte
		binary.BigEndian.PutUint16(b[:], v)
		qcow2Patch(t, p, l.rb+2*cluster, b[:])
	}
	cases := []struct {
		name   string
		opts   []string
		damage func(p string, l layout)
		want   func(r Report) bool
	}{
		{"leaked-cluster", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 1), 0)
		}, func(r Report) bool { return r.Leaks == 1 && r.Corruptions == 0 }},
		{"refcount-too-low", nil, func(p string, l layout) {
			setRef(p, l, int64(host(p, l, 2))/l.cs, 0)
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"refcount-too-high", nil, func(p string, l layout) {
			setRef(p, l, int64(host(p, l, 3))/l.cs, 2)
		}, func(r Report) bool { return r.Leaks == 1 }},
		{"l2-entry-past-eof", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 4), qcow2Copied|1<<40)
		}, func(r Report) bool { return r.Corruptions > 0 && r.Leaks == 1 }},
		{"l2-entry-unaligned", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 5), qcow2Copied|(host(p, l, 5)+512))
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"l2-entry-reserved-bits", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 6), qcow2Get64(t, p, l2e(p, l, 6))|1<<57)
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"overlapping-data", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 7), qcow2Copied|host(p, l, 8))
		}, func(r Report) bool { return r.Corruptions > 0 && r.Leaks == 1 }},
		{"data-over-l2-table", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 9), qcow2Copied|uint64(l.l2))
		}, func(r Report) bool {
			return r.Corruptions > 0 && strings.Contains(qcow2Problems(r), "overlapping metadata: used as L2 table and data")
		}},
		{"l1-entry-unaligned", nil, func(p string, l layout) {
			qcow2Put64(t, p, l.l1, qcow2Copied|uint64(l.l2+4096))
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"l1-entry-past-eof", nil, func(p string, l layout) {
			qcow2Put64(t, p, l.l1, qcow2Copied|1<<45)
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"refblock-past-eof", nil, func(p string, l layout) {
			qcow2Put64(t, p, l.reft+8, 1<<40)
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"refblock-unaligned", nil, func(p string, l layout) {
			qcow2Put64(t, p, l.reft, uint64(l.rb+512))
		}, func(r Report) bool { return r.CheckErrors > 0 || r.Corruptions > 0 }},
		{"refblock-reserved", nil, func(p string, l layout) {
			qcow2Put64(t, p, l.reft, uint64(l.rb)|1)
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"copied-flag-cleared", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 10), host(p, l, 10))
		}, func(r Report) bool { return r.Corruptions == 1 }},
		{"zero-cluster-unaligned", nil, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 11), host(p, l, 11)+512|1)
		}, func(r Report) bool { return r.Corruptions > 0 }},
		{"refcount-1-bit-overflow", []string{"refcount_bits=1"}, func(p string, l layout) {
			qcow2Put64(t, p, l2e(p, l, 12), qcow2Get64(t, p, l2e(p, l, 13)))
		}, func(r Report) bool { return r.Corruptions > 0 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p, l := mk(c.name+".qcow2", c.opts...)
			c.damage(p, l)
			img := openT(t, p, OpenOptions{})
			r := qcow2CompareCheck(t, p, img, false)
			if !c.want(r) {
				t.Errorf("report %+v: not the damage done%s", r, qcow2Problems(r))
			}
			// Reading the damaged image: the same bytes as qemu, or a FormatError where qemu
			// fails too.
			_, qerr := qemutest.Output("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", p, filepath.Join(t.TempDir(), "x.raw"))
			if qerr == nil {
				compareGuestWithQemu(t, p, "qcow2", img)
			} else {
				_, err := io.Copy(io.Discard, io.NewSectionReader(img, 0, img.Size()))
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Errorf("qemu-img convert fails (%v) but glimpse reads: %v", qerr, err)
				}
			}
		})
	}

	// Extended L2 and compressed clusters have their own entry checks.
	t.Run("extl2-bitmap", func(t *testing.T) {
		p := qemutest.Create(t, dir, "x.qcow2", "qcow2", "8M", "extended_l2=on")
		qemutest.IO(t, p, "qcow2", "write -P 1 0 1M", "write -P 2 2M 3000")
		c := openT(t, p, OpenOptions{}).(*disk).c.(*qcow2Core)
		l2 := int64(qcow2Get64(t, p, int64(c.h.l1Off)) & qcow2L1OffsetMask)
		qcow2Put64(t, p, l2+16*1+8, 0xffffffff_00000001) // allocated and zero at once
		qcow2Put64(t, p, l2+16*40+8, 0x3)                // unallocated cluster, allocated subclusters
		img := openT(t, p, OpenOptions{})
		if r := qcow2CompareCheck(t, p, img, false); r.Corruptions < 2 {
			t.Errorf("%+v", r)
		}
		var fe *FormatError
		if _, err := img.ReadAt(make([]byte, 512), 65536); !errors.As(err, &fe) {
			t.Errorf("read of a corrupt subcluster bitmap: %v", err)
		}
	})
	t.Run("compressed-copied", func(t *testing.T) {
		src := filepath.Join(dir, "c.raw")
		qcow2MixedRaw(t, src, 1<<20)
		p := filepath.Join(dir, "c.qcow2")
		qemutest.Img(t, "convert", "-c", "-f", "raw", "-O", "qcow2", src, p)
		c := openT(t, p, OpenOptions{}).(*disk).c.(*qcow2Core)
		l2 := int64(qcow2Get64(t, p, int64(c.h.l1Off)) & qcow2L1OffsetMask)
		e := l2
		for qcow2Get64(t, p, e)&qcow2CompressedBit == 0 {
			e += 8
		}
		qcow2Put64(t, p, e, qcow2Get64(t, p, e)|qcow2Copied)
		img := openT(t, p, OpenOptions{})
		if r := qcow2CompareCheck(t, p, img, false); r.Corruptions != 1 {
			t.Errorf("%+v", r)
		}
		compareGuestWithQemu(t, p, "qcow2", img)
	})
	t.Run("snapshot-l1-unaligned", func(t *testing.T) {
		p := qemutest.Create(t, dir, "s.qcow2", "qcow2", "8M")
		qemutest.IO(t, p, "qcow2", "write -P 1 0 1M")
		qemutest.Img(t, "snapshot", "-c", "s1", p)
		c := openT(t, p, OpenOptions{}).(*disk).c.(*qcow2Core)
		so := int64(c.h.snapshotsOff)
		qcow2Put64(t, p, so, qcow2Get64(t, p, so)+512)
		img := openT(t, p, OpenOptions{})
		if r := qcow2CompareCheck(t, p, img, false); r.Corruptions == 0 {
			t.Errorf("%+v", r)
		}
	})
}

// qcow2CraftedHeader builds a version 3 header with 64 KiB clusters for crafted images: the header
// cluster, an L1 table at 64 KiB, a refcount table at 128 KiB and a refcount block at
// 192 KiB, virtual size 1 GiB.
func qcow2CraftedHeader() []byte {
	b := make([]byte, 4*65536)
	be := binary.BigEndian
	be.PutUint32(b[0:], qcow2Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], 16)
	be.PutUint64(b[24:], 1<<30)
	be.PutUint32(b[36:], 2)
	be.PutUint64(b[40:], 65536)
	be.PutUint64(b[48:], 131072)
	be.PutUint32(b[56:], 1)
	be.PutUint32(b[96:], 4)
	be.PutUint32(b[100:], 112)
	be.PutUint64(b[131072:], 196608)
	for i := 0; i < 4; i++ {
		be.PutUint16(b[196608+2*i:], 1)
	}
	return b
}

// TestQCOW2Hostile: crafted headers give FormatErrors or findings, never panics or large
// allocations.
func TestQCOW2Hostile(t *testing.T) {
	be := binary.BigEndian
	type tc struct {
		name    string
		mod     func(b []byte) []byte
		field   string // the FormatError's field, or "" when Open succeeds
		finding string
	}
	cases := []tc{
		{"valid", func(b []byte) []byte { return b }, "", ""},
		{"huge-l1-size", func(b []byte) []byte { be.PutUint32(b[36:], 0xffffffff); return b }, "l1_size", ""},
		{"l1-at-the-limit-past-eof", func(b []byte) []byte {
			be.PutUint32(b[36:], qcow2MaxL1Bytes/8)
			be.PutUint64(b[40:], 1<<40)
			return b
		}, "", FindPastEOF},
		{"l1-too-small", func(b []byte) []byte { be.PutUint32(b[36:], 1); be.PutUint64(b[24:], 1<<40); return b }, "l1_size", ""},
		{"l1-unaligned", func(b []byte) []byte { be.PutUint64(b[40:], 65536+8); return b }, "l1_table_offset", ""},
		{"l1-offset-overflow", func(b []byte) []byte { be.PutUint64(b[40:], 0xffffffffffff0000); return b }, "l1_table_offset", ""},
		{"cluster-bits-8", func(b []byte) []byte { be.PutUint32(b[20:], 8); return b }, "cluster_bits", ""},
		{"cluster-bits-22", func(b []byte) []byte { be.PutUint32(b[20:], 22); return b }, "cluster_bits", ""},
		{"cluster-bits-huge", func(b []byte) []byte { be.PutUint32(b[20:], 0xffffffff); return b }, "cluster_bits", ""},
		{"header-length-short", func(b []byte) []byte { be.PutUint32(b[100:], 100); return b }, "header_length", ""},
		{"header-length-huge", func(b []byte) []byte { be.PutUint32(b[100:], 0xfffffff8); return b }, "header_length", ""},
		{"header-length-odd", func(b []byte) []byte { be.PutUint32(b[100:], 107); return b }, "", ""},
		{"extension-past-cluster", func(b []byte) []byte {
			be.PutUint32(b[112:], 0x12345678)
			be.PutUint32(b[116:], 65536)
			return b
		}, "length", ""},
		{"extension-header-at-cluster-end", func(b []byte) []byte {
			for off := 112; off < 65536-8; off += 8 {
				be.PutUint32(b[off:], 0x12345678)
			}
			be.PutUint32(b[65532:], 0x12345678)
			return b
		}, "", ""},
		{"backing-format-long", func(b []byte) []byte {
			be.PutUint32(b[112:], qcow2ExtBackingFmt)
			be.PutUint32(b[116:], 40)
			return b
		}, "length", ""},
		{"backing-name-long", func(b []byte) []byte {
			be.PutUint64(b[8:], 65000)
			be.PutUint32(b[16:], 1000)
			return b
		}, "backing_file_size", ""},
		{"backing-offset-past-cluster", func(b []byte) []byte { be.PutUint64(b[8:], 1<<20); return b }, "backing_file_offset", ""},
		{"nb-snapshots-huge", func(b []byte) []byte { be.PutUint32(b[60:], 0xffffffff); return b }, "nb_snapshots", ""},
		{"snapshots-past-eof", func(b []byte) []byte {
			be.PutUint32(b[60:], qcow2MaxSnapshots)
			be.PutUint64(b[64:], 1<<50)
			return b
		}, "", FindPastEOF},
		{"snapshot-extra-too-big", func(b []byte) []byte {
			be.PutUint32(b[60:], 1)
			be.PutUint64(b[64:], 3*65536)
			be.PutUint32(b[3*65536+36:], 1<<30)
			return b
		}, "", FindMalformed},
		{"refcount-order-7", func(b []byte) []byte { be.PutUint32(b[96:], 7); return b }, "refcount_order", ""},
		{"refcount-table-huge", func(b []byte) []byte { be.PutUint32(b[56:], 0xffffffff); return b }, "refcount_table_clusters", ""},
		{"no-refcount-table", func(b []byte) []byte { be.PutUint32(b[56:], 0); return b }, "refcount_table_clusters", ""},
		{"crypt-method-3", func(b []byte) []byte { be.PutUint32(b[32:], 3); return b }, "crypt_method", ""},
		{"size-negative", func(b []byte) []byte { be.PutUint64(b[24:], 1<<63); return b }, "size", ""},
		{"version-1", func(b []byte) []byte { be.PutUint32(b[4:], 1); return b }, "version", ""},
		{"version-4", func(b []byte) []byte { be.PutUint32(b[4:], 4); return b }, "version", ""},
		{"extl2-small-clusters", func(b []byte) []byte { be.PutUint64(b[72:], qcow2IncompatExtL2); be.PutUint32(b[20:], 13); return b }, "cluster_bits", ""},
		{"compression-bit-zlib", func(b []byte) []byte { be.PutUint64(b[72:], qcow2IncompatCompression); return b }, "compression_type", ""},
		{"compression-type-without-bit", func(b []byte) []byte { b[104] = 1; return b }, "compression_type", ""},
		{"compression-type-unknown", func(b []byte) []byte { be.PutUint64(b[72:], qcow2IncompatCompression); b[104] = 9; return b }, "", FindUnknownFeature},
		{"raw-data-without-data-file", func(b []byte) []byte { be.PutUint64(b[88:], qcow2AutoclearRawData); return b }, "autoclear_features", ""},
		{"data-file-name-without-bit", func(b []byte) []byte {
			be.PutUint32(b[112:], qcow2ExtDataFile)
			be.PutUint32(b[116:], 6)
			copy(b[120:], "/etc/x")
			return b
		}, "", FindDataFile},
		{"bitmaps-zero", func(b []byte) []byte {
			be.PutUint64(b[88:], qcow2AutoclearBitmaps)
			be.PutUint32(b[112:], qcow2ExtBitmaps)
			be.PutUint32(b[116:], 24)
			return b
		}, "nb_bitmaps", ""},
		{"luks-without-extension", func(b []byte) []byte { be.PutUint32(b[32:], 2); return b }, "crypt_method", ""},
		{"truncated", func(b []byte) []byte { return b[:50] }, "header_length", ""},
		{"l2-everywhere", func(b []byte) []byte {
			// every L1 entry points at the same L2 table, whose entries point past the end
			be.PutUint32(b[36:], 8192)
			be.PutUint64(b[24:], 8192<<29)
			for i := 0; i < 8192; i++ {
				be.PutUint64(b[65536+8*i:], 3*65536)
			}
			for i := 0; i < 8192; i++ {
				be.PutUint64(b[3*65536+8*i:], qcow2Copied|uint64(i+1)<<50)
			}
			return b
		}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.mod(qcow2CraftedHeader())
			img, err := Open(bytes.NewReader(data), int64(len(data)), OpenOptions{Name: c.name})
			if c.field != "" {
				var fe *FormatError
				if !errors.As(err, &fe) || fe.Field != c.field || fe.File != c.name {
					t.Fatalf("Open: %v, want a FormatError for field %s", err, c.field)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer img.Close()
			if c.finding != "" && !hasFinding(img.Safety(), c.finding) {
				t.Errorf("findings %v lack %s", img.Safety(), c.finding)
			}
			if c.finding == "" && len(img.Safety()) > 0 {
				t.Errorf("findings %v", img.Safety())
			}
			start := time.Now()
			fuzzOpen(t, data, QCOW2)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// TestQCOW2RepeatedTables: an L1 table that cycles through more all-zero L2 tables than the
// cache holds (2 MiB clusters: two tables) once made every lookup reload a 2 MiB table, and
// one Extent call over the 2^56-byte disk ran for minutes (found by FuzzQCOW2). Tables past
// the end of the file are the other half of that input.
func TestQCOW2RepeatedTables(t *testing.T) {
	be := binary.BigEndian
	const cs = 2 << 20
	for _, pastEOF := range []bool{false, true} {
		b := make([]byte, 12*cs)
		be.PutUint32(b[0:], qcow2Magic)
		be.PutUint32(b[4:], 3)
		be.PutUint32(b[20:], 21)
		const entries = 1 << 17
		be.PutUint64(b[24:], entries<<39)
		be.PutUint32(b[36:], entries)
		be.PutUint64(b[40:], cs)
		be.PutUint64(b[48:], 11*cs)
		be.PutUint32(b[56:], 1)
		be.PutUint32(b[96:], 4)
		be.PutUint32(b[100:], 112)
		for i := 0; i < entries; i++ {
			table := uint64(4+2*(i%4)) * cs // 4, 6, 8, 10 MiB: zeros
			if pastEOF {
				table = uint64(100+i) * cs
			}
			be.PutUint64(b[cs+8*i:], qcow2Copied|table)
		}
		start := time.Now()
		fuzzOpen(t, b, QCOW2)
		img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if e, err := img.Extent(0, 0); err != nil || e.Kind != KindHole || e.Length != img.Size() {
			t.Errorf("Extent = %+v, %v", e, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("past the end %v: took %v", pastEOF, d)
		}
	}
}

// TestQCOW2CraftedReads: compressed descriptors, zero and unaligned entries, tables past the
// end of the file, built by hand.
func TestQCOW2CraftedReads(t *testing.T) {
	be := binary.BigEndian
	// The crafted header plus clusters 4 (the L2 table of L1[0]), 5 and 6 (data).
	base := func() []byte {
		b := append(qcow2CraftedHeader(), make([]byte, 3*65536)...)
		be.PutUint64(b[65536:], qcow2Copied|4*65536)
		for i := 4; i < 7; i++ {
			be.PutUint16(b[196608+2*i:], 1)
		}
		return b
	}
	open := func(t *testing.T, b []byte) Image {
		img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "crafted"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		return img
	}
	t.Run("zero-and-data", func(t *testing.T) {
		b := base()
		be.PutUint64(b[4*65536:], qcow2Copied|5*65536)     // cluster 0: data
		be.PutUint64(b[4*65536+8:], qcow2Copied|5*65536|1) // cluster 1: zero (allocated)
		be.PutUint64(b[4*65536+16:], 1)                    // cluster 2: zero
		be.PutUint64(b[4*65536+24:], qcow2Copied|6*65536)  // cluster 3: data
		be.PutUint64(b[4*65536+32:], qcow2Copied|1<<40)    // cluster 4: past the end: zeros
		copy(b[5*65536:], bytes.Repeat([]byte{0xab}, 65536))
		copy(b[6*65536:], bytes.Repeat([]byte{0xcd}, 65536))
		img := open(t, b)
		validate(t, img)
		e, _ := img.Extent(0, 0)
		if e.Kind != KindData || e.Length != 65536 || e.Offset != 5*65536 {
			t.Errorf("extent %+v", e)
		}
		e, _ = img.Extent(65536, 0)
		if e.Kind != KindZero || e.Length != 2*65536 {
			t.Errorf("extent %+v", e)
		}
		buf := make([]byte, 5*65536)
		if _, err := img.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		if buf[0] != 0xab || buf[65536] != 0 || buf[3*65536] != 0xcd || !isZero(buf[4*65536:]) {
			t.Errorf("bytes %x %x %x", buf[0], buf[65536], buf[3*65536])
		}
	})
	t.Run("unaligned-data", func(t *testing.T) {
		b := base()
		be.PutUint64(b[4*65536:], qcow2Copied|5*65536+512)
		img := open(t, b)
		var fe *FormatError
		if _, err := img.ReadAt(make([]byte, 10), 0); !errors.As(err, &fe) || fe.File != "crafted" {
			t.Errorf("ReadAt: %v", err)
		}
	})
	t.Run("l2-unaligned", func(t *testing.T) {
		b := base()
		be.PutUint64(b[65536:], qcow2Copied|4*65536+512)
		img := open(t, b)
		var fe *FormatError
		if _, err := img.Extent(0, 0); !errors.As(err, &fe) || fe.Structure != "L1 table" {
			t.Errorf("Extent: %v", err)
		}
	})
	t.Run("compressed-garbage", func(t *testing.T) {
		for _, ct := range []byte{0, 1} {
			b := base()
			if ct == 1 {
				be.PutUint64(b[72:], qcow2IncompatCompression)
				b[104] = 1
			}
			// offset 5*65536+100, 3 additional sectors (x = 62 - (16 - 8) = 54)
			be.PutUint64(b[4*65536:], qcow2CompressedBit|3<<54|(5*65536+100))
			// the largest descriptor: every sector bit set, offset at the end of the file
			be.PutUint64(b[4*65536+8:], qcow2CompressedBit|(1<<62-1))
			r := rand.New(rand.NewPCG(3, 4))
			for i := 5 * 65536; i < len(b); i++ {
				b[i] = byte(r.Uint32())
			}
			img := open(t, b)
			var fe *FormatError
			if _, err := img.ReadAt(make([]byte, 512), 0); !errors.As(err, &fe) {
				t.Errorf("compression %d: ReadAt: %v", ct, err)
			}
			if _, err := img.ReadAt(make([]byte, 512), 65536); !errors.As(err, &fe) {
				t.Errorf("compression %d: ReadAt: %v", ct, err)
			}
			img.Check()
		}
	})
	t.Run("l1-past-eof", func(t *testing.T) {
		b := base()
		be.PutUint64(b[40:], 1<<40)
		img := open(t, b)
		if !hasFinding(img.Safety(), FindPastEOF) {
			t.Errorf("findings %v", img.Safety())
		}
		validate(t, img)
		if e, _ := img.Extent(0, 0); e.Kind != KindHole || e.Length != img.Size() {
			t.Errorf("extent %+v", e)
		}
		r := img.Check()
		if r.Corruptions == 0 {
			t.Errorf("check %+v", r)
		}
	})
}

// TestQCOW2Huge: an empty 1 TiB image maps as one hole at once, and one with a few clusters
// written far apart maps in a handful of extents.
func TestQCOW2Huge(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := qemutest.Create(t, dir, "huge.qcow2", "qcow2", "1T")
	img := openT(t, p, OpenOptions{})
	e, err := img.Extent(0, 0)
	if err != nil || e.Kind != KindHole || e.Length != 1<<40 {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	qemutest.IO(t, p, "qcow2", "write -P 1 100G 64k", "write -P 2 1023G 128k")
	img = openT(t, p, OpenOptions{})
	var kinds []Kind
	for pos := int64(0); pos < img.Size(); {
		e, err := img.Extent(pos, 0)
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, e.Kind)
		pos = e.End()
	}
	if !slices.Equal(kinds, []Kind{KindHole, KindData, KindHole, KindData, KindHole}) {
		t.Errorf("extents %v", kinds)
	}
	if r := qcow2CompareCheck(t, p, img, false); !r.Clean() {
		t.Error(qcow2Problems(r))
	}
}

// TestQCOW2Concurrent reads a compressed and a plain image from many goroutines (run with
// -race) and compares with a sequential read.
func TestQCOW2Concurrent(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "m.raw")
	qcow2MixedRaw(t, src, 8<<20)
	want, _ := os.ReadFile(src)
	for _, args := range [][]string{{"-o", "cluster_size=4096"}, {"-c", "-o", "compression_type=zstd"}, {"-c", "-o", "cluster_size=512"}} {
		p := filepath.Join(dir, "m.qcow2")
		os.Remove(p)
		qemutest.Img(t, append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, args...), src, p)...)
		img := openT(t, p, OpenOptions{})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(g), 9))
				buf := make([]byte, 100<<10)
				for i := 0; i < 60; i++ {
					n := 1 + r.IntN(len(buf))
					off := r.Int64N(int64(len(want) - n))
					if _, err := img.ReadAt(buf[:n], off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
						errs <- fmt.Errorf("%v: bytes differ at %d+%d", args, off, n)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}

// qcow2CompareStream: the stream inspector, fed the image, gives the file inspector's
// format, size and findings (snapshot tables, bitmaps and LUKS headers lie late in the file).
func qcow2CompareStream(t *testing.T, path string) {
	t.Helper()
	want := ExamineFile(path, OpenOptions{Name: path})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStream(OpenOptions{Name: path})
	for off := 0; off < len(data); off += 100000 {
		s.Write(data[off:min(len(data), off+100000)])
	}
	got := s.Close()
	if got.Format != want.Format || got.VirtualSize != want.VirtualSize || !reflect.DeepEqual(qcow2Codes(got.Findings), qcow2Codes(want.Findings)) {
		t.Errorf("stream verdict %+v\n file verdict %+v", got, want)
	}
}

func qcow2Codes(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Code)
	}
	return out
}

func FuzzQCOW2(f *testing.F) {
	// The qemu-img fixtures seed a fuzzing run (in the coordinating process only: workers
	// get their inputs from it); as a plain test, TestQCOW2Fixtures runs the fuzz body over
	// each of them already.
	fuzzing := flag.Lookup("test.fuzz") != nil && flag.Lookup("test.fuzz").Value.String() != ""
	worker := flag.Lookup("test.fuzzworker") != nil && flag.Lookup("test.fuzzworker").Value.String() == "true"
	if fuzzing && !worker {
		dir := f.TempDir()
		for _, fx := range qcow2Fixtures(f, dir) {
			fuzzSeeds(f, fx.path)
		}
	}
	f.Add(qcow2CraftedHeader())
	thirdPartySeed(f, "dissect.hypervisor/disk/qcow2/basic.qcow2.gz", "dissect.hypervisor/disk/qcow2/basic-zstd.qcow2.gz",
		"dissect.hypervisor/disk/qcow2/snapshot.qcow2.gz", "dissect.hypervisor/disk/qcow2/data-file.qcow2.gz",
		"dissect.hypervisor/disk/qcow2/backing-chain-1.qcow2.gz")
	if seeds, err := filepath.Glob("testdata/qcow2/*"); err == nil {
		fuzzSeeds(f, seeds...)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, QCOW2)
	})
}

// TestQCOW2Regressions runs the crashers the fuzzer found (testdata/qcow2).
func TestQCOW2Regressions(t *testing.T) {
	seeds, _ := filepath.Glob("testdata/qcow2/*")
	for _, p := range seeds {
		t.Run(filepath.Base(p), func(t *testing.T) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			fuzzOpen(t, data, QCOW2)
		})
	}
}

// BenchmarkQCOW2Read reads a 256 MiB image made by qemu-img (plain, and compressed with
// zlib and zstd) through ReadAt in 1 MiB requests, the way the converter does.
func BenchmarkQCOW2Read(b *testing.B) {
	qemutest.Need(b, "qemu-img")
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	qcow2MixedRaw(b, src, 256<<20)
	for _, v := range []struct {
		name string
		args []string
	}{
		{"plain", nil},
		{"zlib", []string{"-c"}},
		{"zstd", []string{"-c", "-o", "compression_type=zstd"}},
	} {
		p := filepath.Join(dir, v.name+".qcow2")
		qemutest.Img(b, append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, v.args...), src, p)...)
		b.Run(v.name, func(b *testing.B) {
			img, err := OpenFile(p, OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer img.Close()
			buf := make([]byte, 1<<20)
			b.SetBytes(img.Size())
			b.ReportAllocs()
			for b.Loop() {
				for off := int64(0); off < img.Size(); off += int64(len(buf)) {
					if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
