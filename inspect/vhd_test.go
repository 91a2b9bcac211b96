package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// vhdFixtures builds every vhd variant qemu-img writes (dynamic and fixed, force_size on and
// off, sizes that need CHS rounding, data in odd places), a crafted differencing disk with its
// parent, and the readable third-party samples of moderate size.
func vhdFixtures(t testing.TB, dir string) []fixture {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	var out []fixture
	add := func(name, size string, opts ...string) string {
		p := qemutest.Create(t, dir, name+".vhd", "vpc", size, opts...)
		return p
	}
	// Data at the first and last sector, across a 2 MiB block boundary, and in the partial
	// last block.
	odd := func(p string, size int64) {
		qemutest.IO(t, p, "vpc",
			"write -P 0x11 0 512",
			"write -P 0x22 2096640 1024", // last sector of block 0 and first of block 1
			fmt.Sprintf("write -P 0x33 %d 512", size-512),
			fmt.Sprintf("write -P 0x44 %d 4096", (size-4096)&^511))
	}
	for _, v := range []struct {
		name, size string
		opts       []string
		data       bool
	}{
		{"dyn-10m", "10M", []string{"subformat=dynamic"}, true},
		{"dyn-1m", "1M", []string{"subformat=dynamic"}, false},
		{"dyn-odd", "33554439", []string{"subformat=dynamic"}, true}, // rounded up to CHS
		{"dyn-force", "10M", []string{"subformat=dynamic", "force_size=on"}, true},
		{"dyn-force-odd", "7340545", []string{"subformat=dynamic", "force_size=on"}, true},
		{"fixed-10m", "10M", []string{"subformat=fixed"}, true},
		{"fixed-force", "5M", []string{"subformat=fixed", "force_size=on"}, true},
		{"fixed-odd", "3000001", []string{"subformat=fixed"}, true},
	} {
		p := add(v.name, v.size, v.opts...)
		if v.data {
			odd(p, qemutest.Info(t, p, "vpc").VirtualSize)
		}
		out = append(out, fixture{name: "vhd/" + v.name, path: p, qemuFormat: "vpc", format: VHD, readable: true})
	}
	parent, child := vhdMakeDifferencing(t, dir)
	out = append(out,
		fixture{name: "vhd/diff-parent", path: parent, qemuFormat: "vpc", format: VHD, readable: true},
		// qemu opens a differencing vhd as if it had no parent (its reads and its backing
		// file disagree with glimpse on purpose), so it is not compared with qemu-img.
		fixture{name: "vhd/differencing", path: child, qemuFormat: "-", format: VHD, findings: []string{FindBackingFile}})
	if qemutest.SharedDirOrEmpty() != "" {
		out = append(out,
			fixture{name: "vhd/dissect-dynamic", path: qemutest.ThirdParty(t, "dissect.hypervisor/disk/vhd/dynamic.vhd.gz"), qemuFormat: "vpc", format: VHD, readable: true},
			fixture{name: "vhd/dissect-fixed", path: qemutest.ThirdParty(t, "dissect.hypervisor/disk/vhd/fixed.vhd.gz"), qemuFormat: "vpc", format: VHD, readable: true},
			fixture{name: "vhd/d2v-zerofilled", path: qemutest.ThirdParty(t, "qemu-iotests/d2v-zerofilled.vhd.bz2"), qemuFormat: "vpc", format: VHD, readable: true},
		)
	}
	return out
}

// vhd builder helpers for crafted images.

func vhdSetFooterChecksum(b []byte) {
	binary.BigEndian.PutUint32(b[64:], 0)
	binary.BigEndian.PutUint32(b[64:], vhdChecksum(b, 64))
}

func vhdSetHeaderChecksum(b []byte) {
	binary.BigEndian.PutUint32(b[36:], 0)
	binary.BigEndian.PutUint32(b[36:], vhdChecksum(b, 36))
}

// vhdFooterBytes builds a footer.
func vhdFooterBytes(app string, cur uint64, cyl uint16, heads, spt uint8, diskType uint32, dataOffset uint64) []byte {
	f := make([]byte, vhdFooterSize)
	copy(f, vhdCookie)
	binary.BigEndian.PutUint32(f[8:], 2)
	binary.BigEndian.PutUint32(f[12:], 0x10000)
	binary.BigEndian.PutUint64(f[16:], dataOffset)
	copy(f[28:32], app)
	binary.BigEndian.PutUint64(f[40:], cur)
	binary.BigEndian.PutUint64(f[48:], cur)
	binary.BigEndian.PutUint16(f[56:], cyl)
	f[58], f[59] = heads, spt
	binary.BigEndian.PutUint32(f[60:], diskType)
	for i := range 16 {
		f[68+i] = byte(i + 1)
	}
	vhdSetFooterChecksum(f)
	return f
}

func vhdWriteFile(t testing.TB, p string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func vhdReadFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vhdMakeDifferencing builds parent.vhd (qemu, dynamic, patterned) and child.vhd, a
// differencing disk made from a qemu dynamic image: disk type 4, the parent's UUID, a W2ru
// locator and a W2ku one, and sector bitmaps that take some sectors from the child and the
// rest from the parent.
func vhdMakeDifferencing(t testing.TB, dir string) (parent, child string) {
	t.Helper()
	parent = qemutest.Create(t, dir, "parent.vhd", "vpc", "6M", "subformat=dynamic")
	qemutest.IO(t, parent, "vpc", "write -P 0xa1 0 6M")
	c := qemutest.Create(t, dir, "child-base.vhd", "vpc", "6M", "subformat=dynamic")
	// Child data: block 0 fully written, block 1 partially, block 2 untouched.
	qemutest.IO(t, c, "vpc", "write -P 0xc1 0 2M", "write -P 0xc2 2M 64k")
	pb := vhdReadFile(t, parent)
	b := vhdReadFile(t, c)
	os.Remove(c)
	hdrOff := int64(binary.BigEndian.Uint64(b[16:]))
	bat := int64(binary.BigEndian.Uint64(b[hdrOff+16:]))
	// Locator data goes at the end, before the footer.
	footer := slices.Clone(b[len(b)-vhdFooterSize:])
	body := b[:len(b)-vhdFooterSize]
	utf16le := func(s string) []byte {
		var o []byte
		for _, r := range s {
			o = append(o, byte(r), byte(r>>8))
		}
		return o
	}
	rel := utf16le(`.\parent.vhd`)
	abs := utf16le(`C:\images\parent.vhd`)
	locRel := int64(len(body))
	body = append(body, make([]byte, 512)...)
	copy(body[locRel:], rel)
	locAbs := int64(len(body))
	body = append(body, make([]byte, 512)...)
	copy(body[locAbs:], abs)
	h := body[hdrOff : hdrOff+vhdHeaderSize]
	setLoc := func(i int, code uint32, off int64, n int) {
		e := h[576+24*i:]
		binary.BigEndian.PutUint32(e, code)
		binary.BigEndian.PutUint32(e[4:], 512)
		binary.BigEndian.PutUint32(e[8:], uint32(n))
		binary.BigEndian.PutUint64(e[16:], uint64(off))
	}
	setLoc(0, vhdPlatW2ku, locAbs, len(abs))
	setLoc(1, vhdPlatW2ru, locRel, len(rel))
	copy(h[40:56], pb[68:84]) // parent UUID
	name := []byte{}
	for _, r := range "parent.vhd" {
		name = append(name, byte(r>>8), byte(r))
	}
	copy(h[64:], name)
	// Bitmaps: block 0 keeps only its first 8 sectors and sectors 100-163; block 1 its
	// first 128 sectors (the 64 KiB written).
	setBitmap := func(blk int, ranges ...[2]int) {
		e := binary.BigEndian.Uint32(b[bat+int64(4*blk):])
		bm := body[int64(e)*512 : int64(e)*512+512]
		clear(bm)
		for _, r := range ranges {
			for s := r[0]; s < r[1]; s++ {
				bm[s/8] |= 0x80 >> (s % 8)
			}
		}
	}
	setBitmap(0, [2]int{0, 8}, [2]int{100, 164})
	setBitmap(1, [2]int{0, 128})
	vhdSetHeaderChecksum(h)
	binary.BigEndian.PutUint32(footer[60:], vhdDifferencing)
	vhdSetFooterChecksum(footer)
	copy(body[:vhdFooterSize], footer)
	child = vhdWriteFile(t, filepath.Join(dir, "child.vhd"), append(body, footer...))
	return parent, child
}

func TestVHDFixtures(t *testing.T) {
	dir := t.TempDir()
	for _, fx := range vhdFixtures(t, dir) {
		t.Run(fx.name, func(t *testing.T) {
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
			vhdValidateReadable(t, img, fx.readable)
			if fx.qemuFormat == "-" {
				return
			}
			compareWithQemu(t, fx.path, fx.qemuFormat, info)
			q := qemutest.Info(t, fx.path, fx.qemuFormat)
			if info.ClusterSize != q.ClusterSize {
				t.Errorf("cluster size %d, qemu-img says %d", info.ClusterSize, q.ClusterSize)
			}
			if fx.readable {
				compareGuestWithQemu(t, fx.path, fx.qemuFormat, img)
			}
			if rep := img.Check(); !rep.Clean() {
				t.Errorf("check: %+v", rep.Problems)
			}
		})
	}
}

// vhdValidateReadable runs validate on readable images, and on the others checks that reads
// fail with a typed error rather than returning wrong bytes.
func vhdValidateReadable(t *testing.T, img Image, readable bool) {
	t.Helper()
	if readable {
		validate(t, img)
		return
	}
	buf := make([]byte, min(img.Size(), 1<<20))
	_, err := img.ReadAt(buf, 0)
	if !errors.Is(err, ErrNotAllowed) && !errors.Is(err, ErrUnsupported) {
		t.Fatalf("ReadAt of an unreadable image: %v, want ErrNotAllowed or ErrUnsupported", err)
	}
}

// TestVHDSizeRule: the virtual size follows qemu's creator-application rule, checked on
// crafted fixed disks against qemu-img itself.
func TestVHDSizeRule(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	const cur = 1<<20 + 4096 // CHS 30x4x17 gives 1044480 bytes
	for _, v := range []struct {
		app     string
		cyl     uint16
		heads   uint8
		spt     uint8
		fromCHS bool
	}{
		{"vpc ", 30, 4, 17, true},
		{"qemu", 30, 4, 17, true},
		{"qem2", 30, 4, 17, false},
		{"win ", 30, 4, 17, false},
		{"d2v ", 30, 4, 17, false},
		{"d2v\x00", 30, 4, 17, true},
		{"CTXS", 30, 4, 17, false},
		{"tap\x00", 30, 4, 17, false},
		{"tap ", 30, 4, 17, true},
		{"vbox", 30, 4, 17, true},
		{"\x00\x00\x00\x00", 30, 4, 17, true},
		{"vpc ", 65535, 16, 255, false}, // maximum geometry: current_size
		{"vpc ", 65535, 16, 254, true},  // CHS larger than the file: reads zeros past it
		{"vpc ", 0, 0, 0, true},
	} {
		name := fmt.Sprintf("%x-%d-%d-%d", v.app, v.cyl, v.heads, v.spt)
		t.Run(name, func(t *testing.T) {
			data := make([]byte, cur)
			for i := range data {
				data[i] = byte(i / 512)
			}
			p := vhdWriteFile(t, filepath.Join(dir, name+".vhd"),
				append(data, vhdFooterBytes(v.app, cur, v.cyl, v.heads, v.spt, vhdFixed, ^uint64(0))...))
			img := openT(t, p, OpenOptions{})
			compareWithQemu(t, p, "vpc", img.Info())
			vi := img.Info().FormatSpecific.Data.(VHDInfo)
			if (vi.SizeFrom == "chs") != v.fromCHS {
				t.Errorf("size from %s, want CHS %v", vi.SizeFrom, v.fromCHS)
			}
			if img.Size() < 64<<20 {
				validate(t, img)
				compareGuestWithQemu(t, p, "vpc", img)
			}
		})
	}
}

// TestVHDQemuQuirks: layouts where qemu's reading is surprising, compared with qemu-img.
func TestVHDQemuQuirks(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	patterned := func(name string, opts ...string) (string, []byte) {
		p := qemutest.Create(t, dir, name, "vpc", "5M", opts...)
		qemutest.IO(t, p, "vpc", "write -P 0x5a 0 3M", "write -P 0x6b 4M 4k")
		return p, vhdReadFile(t, p)
	}
	check := func(t *testing.T, p string, wantFinding string) Image {
		t.Helper()
		img := openT(t, p, OpenOptions{})
		compareWithQemu(t, p, "vpc", img.Info())
		validate(t, img)
		compareGuestWithQemu(t, p, "vpc", img)
		if wantFinding != "" && !hasFinding(img.Safety(), wantFinding) {
			t.Errorf("findings %v, want %s", img.Safety(), wantFinding)
		}
		return img
	}
	t.Run("bitmap-ignored", func(t *testing.T) {
		// qemu reads an allocated block whole, whatever its sector bitmap says.
		_, b := patterned("bitmap.vhd")
		bat := int64(binary.BigEndian.Uint64(b[512+16:]))
		e := int64(binary.BigEndian.Uint32(b[bat:]))
		clear(b[e*512 : e*512+512])
		p := vhdWriteFile(t, filepath.Join(dir, "bitmap-zero.vhd"), b)
		check(t, p, "")
	})
	t.Run("fixed-type-with-header", func(t *testing.T) {
		// A footer copy at 0 that says "fixed": qemu parses the dynamic header, then reads
		// the whole file from offset 0 as the guest disk.
		_, b := patterned("fixedtype.vhd")
		for _, off := range []int{0, len(b) - 512} {
			binary.BigEndian.PutUint32(b[off+60:], vhdFixed)
			vhdSetFooterChecksum(b[off : off+512])
		}
		p := vhdWriteFile(t, filepath.Join(dir, "fixed-type-with-header.vhd"), b)
		img := check(t, p, FindMalformed)
		if rep := img.Check(); rep.Corruptions == 0 {
			t.Errorf("check found nothing: %+v", rep)
		}
	})
	t.Run("dynamic-type-without-header", func(t *testing.T) {
		// A footer only at the end that says "dynamic": qemu refuses it ("invalid VPC
		// image"), and so does glimpse, naming the field.
		p := qemutest.Create(t, dir, "tailonly.vhd", "vpc", "5M", "subformat=fixed")
		b := vhdReadFile(t, p)
		f := b[len(b)-512:]
		binary.BigEndian.PutUint32(f[60:], vhdDynamic)
		vhdSetFooterChecksum(f)
		vhdWriteFile(t, p, b)
		if _, err := qemutest.Output("qemu-img", "info", "-f", "vpc", p); err == nil {
			t.Error("qemu-img opens it")
		}
		vhdWantFormatError(t, p, "footer", "disk_type")
	})
	t.Run("unaligned-fixed", func(t *testing.T) {
		// A file whose size is not a multiple of 512: qemu looks for the footer in the last
		// whole-sector-rounded 512 bytes, reading past the end as zeros. 100 bytes of footer
		// hold every field, so the footer is valid.
		data := make([]byte, 1<<20)
		for i := range data {
			data[i] = byte(i>>9) ^ 0x3c
		}
		f := vhdFooterBytes("win ", 1<<20, 30, 4, 17, vhdFixed, ^uint64(0))
		p := vhdWriteFile(t, filepath.Join(dir, "unaligned.vhd"), append(data, f[:100]...))
		if fs, _ := ProbeAll(bytes.NewReader(vhdReadFile(t, p)), int64(len(data)+100)); !slices.Contains(fs, VHD) {
			t.Errorf("probe %v: want vhd", fs)
		}
		check(t, p, "")
	})
}

// vhdWantFormatError opens path and expects a *FormatError on structure and field.
func vhdWantFormatError(t *testing.T, path, structure, field string) *FormatError {
	t.Helper()
	img, err := OpenFile(path, OpenOptions{})
	if err == nil {
		img.Close()
		t.Fatalf("%s opened; want a FormatError on %s %s", path, structure, field)
	}
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("%s: %v: not a FormatError", path, err)
	}
	if fe.Structure != structure || fe.Field != field || fe.File == "" {
		t.Fatalf("%s: %v: want structure %q field %q", path, err, structure, field)
	}
	return fe
}

// TestVHDThirdParty: the samples give the verdicts the MANIFEST records.
func TestVHDThirdParty(t *testing.T) {
	qemutest.SharedDir(t)
	t.Run("afl5", func(t *testing.T) {
		// qemu: "Max Table Entries too large (1073741825)". glimpse fails on the same field,
		// without allocating the table.
		p := qemutest.ThirdParty(t, "qemu-iotests/afl5.img.bz2")
		if f, err := ProbeAll(vhdFileReader(t, p)); err != nil || !slices.Equal(f, []Format{VHD}) {
			t.Fatalf("probe: %v %v", f, err)
		}
		fe := vhdWantFormatError(t, p, "dynamic disk header", "max_table_entries")
		if fe.Value != uint32(1073741825) || fe.Offset != 512+28 {
			t.Errorf("error %v: value %v offset %d", fe, fe.Value, fe.Offset)
		}
		if _, err := qemutest.Output("qemu-img", "info", p); err == nil || !strings.Contains(err.Error(), "Max Table Entries too large (1073741825)") {
			t.Errorf("qemu-img info: %v", err)
		}
	})
	for _, v := range []struct {
		rel      string
		size     int64
		sizeFrom string
		sha      string // of the guest disk, from the MANIFEST ("" when not given)
	}{
		{"qemu-iotests/virtualpc-dynamic.vhd.bz2", 136363130880, "chs", ""},
		{"qemu-iotests/hyperv2012r2-dynamic.vhd.bz2", 136365211648, "current-size", ""},
		{"qemu-iotests/d2v-zerofilled.vhd.bz2", 263454720, "current-size", "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"},
		{"dissect.hypervisor/disk/vhd/dynamic.vhd.gz", 10485760, "current-size", "ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784"},
		{"dissect.hypervisor/disk/vhd/fixed.vhd.gz", 10485760, "current-size", "459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"},
	} {
		t.Run(filepath.Base(v.rel), func(t *testing.T) {
			p := qemutest.ThirdParty(t, v.rel)
			img := openT(t, p, OpenOptions{})
			info := img.Info()
			if info.Format != VHD || info.VirtualSize != v.size || len(info.Safety) != 0 {
				t.Fatalf("info: %s %d %v; want vhd %d, no findings", info.Format, info.VirtualSize, info.Safety, v.size)
			}
			vi := info.FormatSpecific.Data.(VHDInfo)
			if vi.SizeFrom != v.sizeFrom {
				t.Errorf("size from %s, want %s", vi.SizeFrom, v.sizeFrom)
			}
			if vi.DiskType != "fixed" && info.ClusterSize != 2<<20 {
				t.Errorf("cluster size %d", info.ClusterSize)
			}
			compareWithQemu(t, p, "vpc", info)
			if rep := img.Check(); !rep.Clean() {
				t.Errorf("check: %+v", rep.Problems)
			}
			if v.sha != "" {
				if got := guestSHA256(t, img); got != v.sha {
					t.Errorf("guest SHA-256 %s, MANIFEST says %s", got, v.sha)
				}
				return
			}
			// 127 GiB of nothing: one hole, reading zeros, found without reading it.
			e, err := img.Extent(0, 0)
			if err != nil || e.Kind != KindHole || e.Length != img.Size() {
				t.Errorf("Extent(0) = %+v, %v; want one hole", e, err)
			}
			buf := make([]byte, 1<<20)
			for _, off := range []int64{0, img.Size()/2 + 12345, img.Size() - int64(len(buf))} {
				if _, err := img.ReadAt(buf, off); err != nil || !isZero(buf) {
					t.Errorf("ReadAt(%d): %v, zero %v", off, err, isZero(buf))
				}
			}
		})
	}
	t.Run("fixed-probe", func(t *testing.T) {
		// qemu probes the fixed sample as raw; glimpse recognises its footer.
		p := qemutest.ThirdParty(t, "dissect.hypervisor/disk/vhd/fixed.vhd.gz")
		if q := qemutest.Info(t, p, ""); q.Format != "raw" {
			t.Errorf("qemu-img probes %s", q.Format)
		}
		if f, err := Probe(vhdFileReader(t, p)); err != nil || f != VHD {
			t.Errorf("Probe: %v %v", f, err)
		}
	})
}

// vhdFileReader returns a reader and size for Probe.
func vhdFileReader(t testing.TB, p string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

// vhdDynamicBytes is a qemu-made 5 MiB dynamic vhd with data in blocks 0 and 2 (block 1 and
// the rest unallocated): footer copy at 0, header at 512, BAT at 1536.
func vhdDynamicBytes(t testing.TB, dir string) []byte {
	t.Helper()
	p := qemutest.Create(t, dir, "base.vhd", "vpc", "5M", "subformat=dynamic")
	qemutest.IO(t, p, "vpc", "write -P 0x71 0 4k", "write -P 0x72 4M 4k")
	return vhdReadFile(t, p)
}

// TestVHDHostile: crafted damage gives FormatErrors naming the field, findings, or check
// problems, never a panic or a silent success.
func TestVHDHostile(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := vhdDynamicBytes(t, dir)
	const hdr, bat = 512, 1536
	header := func(b []byte, edit func(h []byte)) []byte {
		edit(b[hdr : hdr+vhdHeaderSize])
		vhdSetHeaderChecksum(b[hdr : hdr+vhdHeaderSize])
		return b
	}
	footer := func(b []byte, edit func(f []byte)) []byte {
		for _, off := range []int{0, len(b) - 512} {
			edit(b[off : off+512])
			vhdSetFooterChecksum(b[off : off+512])
		}
		return b
	}
	be32 := binary.BigEndian.PutUint32
	be64 := binary.BigEndian.PutUint64
	entry := func(b []byte, i int) uint32 { return binary.BigEndian.Uint32(b[bat+4*i:]) }

	t.Run("errors", func(t *testing.T) {
		for _, v := range []struct {
			name, structure, field string
			mutate                 func(b []byte) []byte
		}{
			{"footer-checksum", "footer", "checksum", func(b []byte) []byte { b[40] ^= 1; return b }},
			{"huge-table", "dynamic disk header", "max_table_entries", func(b []byte) []byte {
				return header(b, func(h []byte) { be32(h[28:], 0x40000001) })
			}},
			{"small-table", "dynamic disk header", "max_table_entries", func(b []byte) []byte {
				return header(b, func(h []byte) { be32(h[28:], 1) })
			}},
			{"block-size-0", "dynamic disk header", "block_size", func(b []byte) []byte {
				return header(b, func(h []byte) { be32(h[32:], 0) })
			}},
			{"block-size-odd", "dynamic disk header", "block_size", func(b []byte) []byte {
				return header(b, func(h []byte) { be32(h[32:], 3<<20) })
			}},
			{"block-size-256", "dynamic disk header", "block_size", func(b []byte) []byte {
				return header(b, func(h []byte) { be32(h[32:], 256) })
			}},
			{"header-cookie", "dynamic disk header", "cookie", func(b []byte) []byte {
				return header(b, func(h []byte) { copy(h, "cxsparsf") })
			}},
			{"header-past-eof", "footer", "data_offset", func(b []byte) []byte {
				return footer(b, func(f []byte) { be64(f[16:], 1<<40) })
			}},
			{"header-offset-negative", "footer", "data_offset", func(b []byte) []byte {
				return footer(b, func(f []byte) { be64(f[16:], 1<<63) })
			}},
			{"table-offset-overflow", "dynamic disk header", "table_offset", func(b []byte) []byte {
				return header(b, func(h []byte) { be64(h[16:], 1<<63-8) })
			}},
			{"too-large", "footer", "current_size", func(b []byte) []byte {
				return footer(b, func(f []byte) { copy(f[28:], "win "); be64(f[48:], 3<<40) })
			}},
		} {
			t.Run(v.name, func(t *testing.T) {
				p := vhdWriteFile(t, filepath.Join(dir, v.name+".vhd"), v.mutate(slices.Clone(base)))
				vhdWantFormatError(t, p, v.structure, v.field)
			})
		}
	})

	t.Run("findings", func(t *testing.T) {
		for _, v := range []struct {
			name     string
			findings []string
			mutate   func(b []byte) []byte
		}{
			{"table-past-eof", []string{FindPastEOF}, func(b []byte) []byte {
				return header(b, func(h []byte) { be64(h[16:], 1<<30) })
			}},
			{"header-checksum", []string{FindCorrupt}, func(b []byte) []byte { b[hdr+700] ^= 0x40; return b }},
			{"header-cut-by-eof", []string{FindPastEOF}, func(b []byte) []byte {
				// a header copy at 0 whose header is the last 600 bytes of the file
				b = footer(b, func(f []byte) { be64(f[16:], uint64(len(b)-600)) })
				h := slices.Clone(b[hdr : hdr+vhdHeaderSize])
				copy(b[len(b)-600:], h[:600])
				return b
			}},
			{"locator-past-eof", []string{FindPastEOF, FindBackingFile}, func(b []byte) []byte {
				b = footer(b, func(f []byte) { be32(f[60:], vhdDifferencing) })
				return header(b, func(h []byte) {
					be32(h[576:], vhdPlatW2ru)
					be32(h[576+8:], 40)
					be64(h[576+16:], 1<<40)
				})
			}},
			{"locator-too-long", []string{FindTooLarge, FindBackingFile}, func(b []byte) []byte {
				b = footer(b, func(f []byte) { be32(f[60:], vhdDifferencing) })
				return header(b, func(h []byte) {
					be32(h[576:], vhdPlatW2ku)
					be32(h[576+8:], 100000)
					be64(h[576+16:], 512)
				})
			}},
			{"unknown-type", []string{FindMalformed}, func(b []byte) []byte {
				return footer(b, func(f []byte) { be32(f[60:], 7) })
			}},
		} {
			t.Run(v.name, func(t *testing.T) {
				p := vhdWriteFile(t, filepath.Join(dir, v.name+".vhd"), v.mutate(slices.Clone(base)))
				img := openT(t, p, OpenOptions{})
				var codes []string
				for _, f := range img.Safety() {
					codes = append(codes, f.Code)
				}
				slices.Sort(codes)
				want := slices.Sorted(slices.Values(v.findings))
				if !slices.Equal(codes, want) {
					t.Errorf("findings %v, want %v", img.Safety(), want)
				}
				// Whatever the damage, reads and check return.
				buf := make([]byte, 1<<20)
				for off := int64(0); off < img.Size(); off += int64(len(buf)) {
					img.ReadAt(buf, off)
				}
				img.Check()
				if v.name == "table-past-eof" {
					if _, err := img.ReadAt(buf[:512], 0); !errors.Is(err, ErrInvalid) {
						t.Errorf("read through a BAT past the end: %v, want a FormatError", err)
					}
					if rep := img.Check(); rep.CheckErrors == 0 {
						t.Errorf("check of a BAT past the end: %+v", rep)
					}
				}
			})
		}
	})

	t.Run("check", func(t *testing.T) {
		for _, v := range []struct {
			name   string
			want   string // in a problem's message
			mutate func(b []byte) []byte
		}{
			{"block-past-eof", "past the end of the file", func(b []byte) []byte { be32(b[bat:], 1<<24); return b }},
			{"blocks-overlap", "overlaps the block of entry", func(b []byte) []byte { be32(b[bat+8:], entry(b, 0)); return b }},
			{"block-on-header", "overlaps the dynamic disk header", func(b []byte) []byte { be32(b[bat:], 1); return b }},
			{"no-end-footer", "no valid footer at the end", func(b []byte) []byte { return b[:len(b)-512] }},
			{"footers-differ", "differs from the copy", func(b []byte) []byte {
				f := b[len(b)-512:]
				be32(f[24:], 12345)
				vhdSetFooterChecksum(f)
				return b
			}},
			{"header-checksum", "checksum", func(b []byte) []byte { b[hdr+700] ^= 0x40; return b }},
		} {
			t.Run(v.name, func(t *testing.T) {
				p := vhdWriteFile(t, filepath.Join(dir, "check-"+v.name+".vhd"), v.mutate(slices.Clone(base)))
				img := openT(t, p, OpenOptions{})
				rep := img.Check()
				found := false
				for _, pr := range rep.Problems {
					found = found || pr.Kind == Corruption && strings.Contains(pr.Message, v.want)
				}
				if !found || rep.Corruptions == 0 {
					t.Errorf("check: %+v; want a corruption about %q", rep.Problems, v.want)
				}
				validate(t, img)
			})
		}
	})
}

// TestVHDDifferencing: a differencing disk reads its own sectors where its bitmap says so
// and its parent's elsewhere, only when backing files are allowed, and only from a parent
// with the recorded UUID in its own directory.
func TestVHDDifferencing(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	parent, child := vhdMakeDifferencing(t, dir)
	img := openT(t, child, OpenOptions{AllowBacking: true})
	size := img.Size()
	if ps := qemutest.Info(t, parent, "vpc").VirtualSize; ps != size {
		t.Fatalf("sizes: child %d, parent %d", size, ps)
	}
	want := make([]byte, size)
	for i := range min(size, 6<<20) {
		want[i] = 0xa1
	}
	fill := func(from, to int64, v byte) {
		for i := from * 512; i < to*512; i++ {
			want[i] = v
		}
	}
	fill(0, 8, 0xc1)
	fill(100, 164, 0xc1)
	fill(4096, 4096+128, 0xc2)
	got := make([]byte, size)
	if n, err := img.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("ReadAt: %d %v", n, err)
	}
	if i := vhdFirstDiff(got, want); i >= 0 {
		t.Fatalf("guest byte %d is 0x%02x, want 0x%02x", i, got[i], want[i])
	}
	validate(t, img)
	info := img.Info()
	if info.BackingFilename != "parent.vhd" || !hasFinding(info.Safety, FindBackingFile) {
		t.Errorf("backing %q, findings %v", info.BackingFilename, info.Safety)
	}
	vi := info.FormatSpecific.Data.(VHDInfo)
	if vi.DiskType != "differencing" || len(vi.ParentLocators) != 2 || vi.ParentLocators[0].Path != `C:\images\parent.vhd` ||
		vi.ParentLocators[1].Path != `.\parent.vhd` || vi.ParentName != "parent.vhd" {
		t.Errorf("vhd info: %+v", vi)
	}
	for _, e := range []struct {
		off   int64
		kind  Kind
		depth int
		len   int64
	}{
		{0, KindData, 0, 4096},
		{4096, KindData, 1, 92 * 512},
		{100 * 512, KindData, 0, 64 * 512},
		{2 << 20, KindData, 0, 64 << 10},
	} {
		x, err := img.Extent(e.off, 0)
		if err != nil || x.Kind != e.kind || x.Depth != e.depth || x.Length != e.len {
			t.Errorf("Extent(%d) = %+v, %v; want %v depth %d length %d", e.off, x, err, e.kind, e.depth, e.len)
		}
	}
	if rep := img.Check(); !rep.Clean() {
		t.Errorf("check: %+v", rep.Problems)
	}

	t.Run("not-allowed", func(t *testing.T) {
		img := openT(t, child, OpenOptions{})
		buf := make([]byte, 4096)
		if _, err := img.ReadAt(buf, 0); err != nil || buf[0] != 0xc1 {
			t.Errorf("reading the child's own sectors: %v", err)
		}
		if _, err := img.ReadAt(buf, 4096); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("reading the parent's sectors: %v, want ErrNotAllowed", err)
		}
	})
	b := vhdReadFile(t, child)
	variant := func(t *testing.T, name string, edit func(c, h []byte)) Image {
		c := slices.Clone(b)
		h := c[512 : 512+vhdHeaderSize]
		edit(c, h)
		vhdSetHeaderChecksum(h)
		return openT(t, vhdWriteFile(t, filepath.Join(dir, name), c), OpenOptions{AllowBacking: true})
	}
	setRel := func(c, h []byte, rel string) {
		off := binary.BigEndian.Uint64(h[576+24+16:])
		d := c[off : off+512]
		clear(d)
		for i, r := range rel {
			d[2*i] = byte(r)
		}
		binary.BigEndian.PutUint32(h[576+24+8:], uint32(2*len(rel)))
	}
	t.Run("uuid-mismatch", func(t *testing.T) {
		img := variant(t, "uuid.vhd", func(_, h []byte) { h[45] ^= 1 })
		_, err := img.ReadAt(make([]byte, 512), 4096)
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Field != "parent_uuid" {
			t.Errorf("parent with another UUID: %v", err)
		}
	})
	t.Run("escaping-locator", func(t *testing.T) {
		img := variant(t, "escape.vhd", func(c, h []byte) {
			setRel(c, h, `..\parent.vhd`)
			clear(h[64:576])
		})
		if _, err := img.ReadAt(make([]byte, 512), 4096); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("locator leaving the directory: %v, want ErrNotAllowed", err)
		}
	})
	t.Run("loop", func(t *testing.T) {
		img := variant(t, "loop.vhd", func(c, h []byte) {
			setRel(c, h, `.\loop.vhd`)
			clear(h[64:576])
		})
		if _, err := img.ReadAt(make([]byte, 512), 4096); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("a disk that is its own parent: %v, want ErrNotAllowed", err)
		}
	})
	t.Run("missing-parent", func(t *testing.T) {
		sub := t.TempDir()
		p := vhdWriteFile(t, filepath.Join(sub, "child.vhd"), b)
		img := openT(t, p, OpenOptions{AllowBacking: true})
		if _, err := img.ReadAt(make([]byte, 512), 4096); err == nil || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing parent: %v", err)
		}
	})
}

func vhdFirstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// TestVHDStream: the stream inspector agrees with the file inspector on every fixture,
// detected and declared.
func TestVHDStream(t *testing.T) {
	dir := t.TempDir()
	for _, fx := range vhdFixtures(t, dir) {
		data := vhdReadFile(t, fx.path)
		if len(data) > 32<<20 {
			continue
		}
		t.Run(fx.name, func(t *testing.T) {
			for _, opt := range []OpenOptions{{}, {Format: VHD}} {
				v := vhdStreamAgrees(t, fx.name, data, opt)
				if v.Format != VHD {
					t.Errorf("%+v: format %s", opt, v.Format)
				}
			}
		})
	}
}

func FuzzVHD(f *testing.F) {
	if _, err := exec.LookPath("qemu-img"); (err == nil || qemutest.InCI()) && !vhdFuzzWorker() {
		dir := f.TempDir()
		for _, fx := range vhdFixtures(f, dir) {
			data := vhdReadFile(f, fx.path)
			if len(data) > 64<<10 {
				// keep the metadata: the head, and the footer of fixed disks
				data = append(data[:64<<10:64<<10], data[len(data)-512:]...)
			}
			f.Add(data)
		}
		f.Add(vhdDynamicBytes(f, dir))
	}
	f.Add(vhdCompact(false))
	f.Add(vhdCompact(true))
	// Crafted: a fixed footer alone, a footer copy with a header and a tiny BAT.
	f.Add(vhdFooterBytes("win ", 4096, 1, 1, 8, vhdFixed, ^uint64(0)))
	small := make([]byte, 3*512+512+2048+512)
	copy(small, vhdFooterBytes("qem2", 4096, 1, 1, 8, vhdDynamic, 512))
	h := small[512:1536]
	copy(h, vhdDynCookie)
	binary.BigEndian.PutUint64(h[8:], ^uint64(0))
	binary.BigEndian.PutUint64(h[16:], 1536)
	binary.BigEndian.PutUint32(h[24:], 0x10000)
	binary.BigEndian.PutUint32(h[28:], 1)
	binary.BigEndian.PutUint32(h[32:], 2048)
	vhdSetHeaderChecksum(h)
	binary.BigEndian.PutUint32(small[1536:], 4)
	copy(small[len(small)-512:], small[:512])
	f.Add(small)
	thirdPartySeed(f, "qemu-iotests/afl5.img.bz2", "qemu-iotests/virtualpc-dynamic.vhd.bz2",
		"qemu-iotests/hyperv2012r2-dynamic.vhd.bz2", "dissect.hypervisor/disk/vhd/dynamic.vhd.gz")
	fuzzSeeds(f, vhdTestdata()...)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, VHD)
	})
}

// FuzzVHDPatch fuzzes through the checksums: its input is a list of patches (a 2-byte offset,
// a length, bytes) applied to a small dynamic or differencing disk, after which the footer
// and header checksums are made right again unless data[1] says not to (bit 0: footers, bit
// 1: header).
func FuzzVHDPatch(f *testing.F) {
	f.Add([]byte{0, 0})
	f.Add([]byte{1, 0})
	f.Add(append([]byte{0, 0}, vhdPatchBytes(512+28, []byte{0x40, 0, 0, 1})...))           // max_table_entries
	f.Add(append([]byte{1, 0}, vhdPatchBytes(1536, []byte{0, 0, 0, 1})...))                // a BAT entry
	f.Add(append([]byte{1, 0}, vhdPatchBytes(512+28, []byte{0, 0, 0, 16, 0, 0, 8, 0})...)) // 2 KiB blocks
	f.Add(append([]byte{0, 0}, vhdPatchBytes(60, []byte{0, 0, 0, 2})...))                  // disk type fixed
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, vhdFuzzImage(data), VHD)
	})
}

func vhdPatchBytes(off int, b []byte) []byte {
	return append([]byte{byte(off), byte(off >> 8), byte(len(b))}, b...)
}

// vhdCompact builds a small dynamic disk by hand: footer copy, header at 512 (4 KiB blocks,
// 8 entries), BAT at 1536, block 0 at 2048 and block 2 at 6656 (each a 512-byte bitmap and
// 4 KiB of data), footer. As a differencing disk it has a W2ru locator at 11264.
func vhdCompact(differencing bool) []byte {
	const block0, block2, loc = 2048, 6656, 11264
	b := make([]byte, loc+512+512)
	typ := uint32(vhdDifferencing)
	if !differencing {
		typ = vhdDynamic
	}
	copy(b, vhdFooterBytes("qem2", 32768, 1, 1, 64, typ, 512))
	h := b[512:1536]
	copy(h, vhdDynCookie)
	binary.BigEndian.PutUint64(h[8:], ^uint64(0))
	binary.BigEndian.PutUint64(h[16:], 1536)
	binary.BigEndian.PutUint32(h[24:], 0x10000)
	binary.BigEndian.PutUint32(h[28:], 8)
	binary.BigEndian.PutUint32(h[32:], 4096)
	for i := range 8 {
		binary.BigEndian.PutUint32(b[1536+4*i:], vhdUnallocated)
	}
	binary.BigEndian.PutUint32(b[1536:], block0/512)
	binary.BigEndian.PutUint32(b[1536+8:], block2/512)
	b[block0], b[block2] = 0xf0, 0xff
	for i := block0 + 512; i < block0+512+4096; i++ {
		b[i] = byte(i)
	}
	for i := block2 + 512; i < block2+512+4096; i++ {
		b[i] = byte(i) ^ 0x55
	}
	if differencing {
		copy(h[576:], []byte{'W', '2', 'r', 'u', 0, 0, 2, 0, 0, 0, 0, 24})
		binary.BigEndian.PutUint64(h[576+16:], loc)
		copy(b[loc:], vhdUTF16LE(`.\parent.vhd`))
	}
	vhdSetHeaderChecksum(h)
	copy(b[len(b)-512:], b[:512])
	return b
}

// vhdFuzzImage builds the image FuzzVHDPatch opens.
func vhdFuzzImage(data []byte) []byte {
	if len(data) < 2 {
		return vhdCompact(false)
	}
	b := vhdCompact(data[0]%2 == 1)
	for p := data[2:]; len(p) >= 3; {
		off := (int(p[0]) | int(p[1])<<8) % len(b)
		n := min(int(p[2])%64, len(p)-3)
		copy(b[off:], p[3:3+n])
		p = p[3+n:]
	}
	if data[1]&1 == 0 {
		vhdSetFooterChecksum(b[:512])
		vhdSetFooterChecksum(b[len(b)-512:])
	}
	if data[1]&2 == 0 {
		vhdSetHeaderChecksum(b[512:1536])
	}
	return b
}

// vhdFuzzWorker reports whether this process is a fuzzing worker, which gets its inputs from
// the coordinator: building seed images there only spends fuzzing time.
func vhdFuzzWorker() bool {
	fl := flag.Lookup("test.fuzzworker")
	return fl != nil && fl.Value.String() == "true"
}

// vhdTestdata lists the files under testdata/vhd (regression inputs found by fuzzing).
func vhdTestdata() []string {
	m, _ := filepath.Glob(filepath.Join("testdata", "vhd", "*"))
	return m
}

// vhdStreamAgrees is checkStreamAgrees with cheaper write sizes for larger images (1-byte
// writes only up to 1 MiB, 17-byte writes up to 8 MiB), so that this file's tests stay quick;
// TestAllFixturesStreamAgrees runs the full set on the fixtures.
func vhdStreamAgrees(t *testing.T, name string, data []byte, opt OpenOptions) Verdict {
	t.Helper()
	if len(data) <= 1<<20 {
		return checkStreamAgrees(t, name, data, opt)
	}
	opt.Name = name
	file := Examine(bytes.NewReader(data), int64(len(data)), opt)
	chunks := []int{509, 64 << 10, 1 << 20}
	if len(data) <= 8<<20 {
		chunks = append([]int{17}, chunks...)
	}
	var first *RejectedError
	for i, chunk := range chunks {
		stream, early := streamVerdict(data, chunk, opt)
		sameVerdict(t, fmt.Sprintf("%s (writes of %d bytes)", name, chunk), file, stream)
		if i == 0 {
			first = early
			continue
		}
		if (first == nil) != (early == nil) ||
			early != nil && (early.Offset != first.Offset || !reflect.DeepEqual(early.Verdict.Findings, first.Verdict.Findings)) {
			t.Errorf("%s: early rejection depends on chunking: %v with writes of %d bytes, %v with %d", name, early, chunk, first, chunks[0])
		}
	}
	if first != nil && file.Safe() {
		t.Errorf("%s: stream rejected early (%v) an image the file inspector finds safe", name, first)
	}
	return file
}

// TestVHDSmallBlockDifferencing: a differencing disk with 2 KiB blocks, for which qemu's
// bitmap size is 0, fails its reads with a FormatError (FuzzVHDPatch found an index panic).
func TestVHDSmallBlockDifferencing(t *testing.T) {
	b := vhdFuzzImage(append([]byte{1, 0}, vhdPatchBytes(512+28, []byte{0, 0, 0, 16, 0, 0, 8, 0})...))
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "small.vhd"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("read: %v, want a FormatError", err)
	}
	img.Check()
}

// TestVHDReadAllocs: reading guest data allocates nothing per call (the converter reads
// gigabytes through ReadAt), for fixed and dynamic vhd and for vhdx.
func TestVHDReadAllocs(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, v := range []struct{ name, format, qfmt string }{
		{"dyn.vhd", "vpc", "vpc"}, {"fixed.vhd", "vpc", "vpc"}, {"dyn.vhdx", "vhdx", "vhdx"},
	} {
		var opts []string
		if strings.HasPrefix(v.name, "fixed") {
			opts = append(opts, "subformat=fixed")
		}
		p := qemutest.Create(t, dir, v.name, v.format, "8M", opts...)
		qemutest.IO(t, p, v.qfmt, "write -P 0x42 0 8M")
		img := openT(t, p, OpenOptions{Format: map[string]Format{"vpc": VHD, "vhdx": VHDX}[v.format]})
		buf := make([]byte, 64<<10)
		off := int64(0)
		allocs := testing.AllocsPerRun(200, func() {
			if _, err := img.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
			off = (off + 4096*17) % (img.Size() - int64(len(buf)))
		})
		if allocs > 0 {
			t.Errorf("%s: %.1f allocations per ReadAt", v.name, allocs)
		}
	}
}

// TestVHDMapLikeQemu: for a dynamic disk the data runs glimpse reports are the ones
// qemu-img map reports, whole allocated blocks. For a fixed disk qemu-img map says "data"
// everywhere, but glimpse reports the file's holes as zeros, so that a conversion skips
// them as qemu-img convert does (its block status looks into the file when it wants zeros).
func TestVHDMapLikeQemu(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, sub := range []string{"dynamic", "fixed"} {
		p := qemutest.Create(t, dir, sub+".vhd", "vpc", "12M", "subformat="+sub)
		qemutest.IO(t, p, "vpc", "write -P 1 0 4k", "write -P 2 3M 1M", "write -P 3 8M 512")
		img := openT(t, p, OpenOptions{Format: VHD})
		var got [][2]int64
		for pos := int64(0); pos < img.Size(); {
			e, err := img.Extent(pos, 0)
			if err != nil {
				t.Fatal(err)
			}
			if e.Kind == KindData {
				got = vhdAppendRun(got, e.Start, e.Length)
			}
			pos = e.End()
		}
		var q []struct {
			Start, Length int64
			Data          bool
		}
		out := qemutest.Img(t, "map", "--output=json", "-f", "vpc", p)
		if err := json.Unmarshal([]byte(out), &q); err != nil {
			t.Fatal(err)
		}
		var want [][2]int64
		for _, e := range q {
			if e.Data && e.Start < img.Size() {
				want = vhdAppendRun(want, e.Start, min(e.Length, img.Size()-e.Start))
			}
		}
		if sub == "fixed" {
			want = [][2]int64{{0, 4096}, {3 << 20, 1 << 20}, {8 << 20, 4096}}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: data runs %v, want %v", sub, got, want)
		}
	}
}

func vhdAppendRun(runs [][2]int64, start, n int64) [][2]int64 {
	if k := len(runs); k > 0 && runs[k-1][0]+runs[k-1][1] == start {
		runs[k-1][1] += n
		return runs
	}
	return append(runs, [2]int64{start, n})
}
