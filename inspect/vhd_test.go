package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

func writeFileT(t testing.TB, p string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFileT(t testing.TB, p string) []byte {
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
	pb := readFileT(t, parent)
	b := readFileT(t, c)
	os.Remove(c)
	hdrOff := int64(binary.BigEndian.Uint64(b[16:]))
	h := b[hdrOff : hdrOff+vhdHeaderSize]
	bat := int64(binary.BigEndian.Uint64(h[16:]))
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
	child = writeFileT(t, filepath.Join(dir, "child.vhd"), append(body, footer...))
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
			validateReadable(t, img, fx.readable)
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

// validateReadable runs validate on readable images, and on the others checks that reads
// fail with a typed error rather than returning wrong bytes.
func validateReadable(t *testing.T, img Image, readable bool) {
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
