package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// vdiPatch32 overwrites a little-endian uint32 of a VDI file.
func vdiPatch32(t testing.TB, path string, off int64, v uint32) {
	t.Helper()
	ptPatch(t, path, off, binary.LittleEndian.AppendUint32(nil, v))
}

// vdiFixtures builds every VDI variant: dynamic (empty, with data in odd places, with a
// discarded block, with an odd disk size), static, a differencing image (crafted: qemu-img
// cannot make one) and a truncated one.
func vdiFixtures(t testing.TB, dir string) []fixture {
	qemutest.Need(t, "qemu-img", "qemu-io")
	var out []fixture
	add := func(name, path, qemuFormat string, readable bool, findings ...string) {
		out = append(out, fixture{name: name, path: path, qemuFormat: qemuFormat, format: VDI, findings: findings, readable: readable})
	}
	add("vdi-dynamic-empty", qemutest.Create(t, dir, "empty.vdi", "vdi", "10M"), "vdi", true)

	data := qemutest.Create(t, dir, "data.vdi", "vdi", "16M")
	qemutest.IO(t, data, "vdi",
		"write -P 0x11 0 512",         // the first sector
		"write -P 0x22 1048064 1024",  // across the first block boundary
		"write -P 0x33 5M 3M",         // three whole blocks, contiguous in the file
		"write -P 0x44 2M 4096",       // a block allocated after them
		"write -P 0x55 16776704 512",  // the last sector
		"write -P 0x66 9437184 65536", // middle of a block
	)
	add("vdi-dynamic-data", data, "vdi", true)

	static := qemutest.Create(t, dir, "static.vdi", "vdi", "4M", "static=on")
	qemutest.IO(t, static, "vdi", "write -P 0x77 0 4096", "write -P 0x88 3M 1M")
	add("vdi-static", static, "vdi", true)

	// A discarded block (0xfffffffe) reads as zeros; blocks-allocated is kept consistent so
	// that qemu-img check agrees the image is clean.
	disc := ptCopy(t, data, filepath.Join(dir, "discarded.vdi"))
	vdiPatch32(t, disc, 0x200+5*4, vdiDiscarded)
	vdiPatch32(t, disc, 0x184, vdiReadU32(t, disc, 0x184)-1)
	add("vdi-discarded-block", disc, "vdi", true)

	// VBoxManage convertfromraw writes disk sizes that are not sector multiples; qemu
	// rounds them up.
	odd := qemutest.Create(t, dir, "odd.vdi", "vdi", "1000000")
	ptPatch(t, odd, 0x170, binary.LittleEndian.AppendUint64(nil, 1000000))
	qemutest.IO(t, odd, "vdi", "write -P 0x99 999936 512")
	add("vdi-odd-disk-size", odd, "vdi", true)

	// A differencing image: qemu refuses it (non-null link UUID), glimpse describes it.
	diff := ptCopy(t, data, filepath.Join(dir, "diff.vdi"))
	vdiPatch32(t, diff, 0x4c, 4)
	ptPatch(t, diff, 0x1a8, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	add("vdi-differencing", diff, "-", false, FindBackingFile)

	// A truncated image: its last allocated block is cut short. qemu reads zeros there.
	trunc := ptCopy(t, data, filepath.Join(dir, "truncated.vdi"))
	st, err := os.Stat(trunc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(trunc, st.Size()-512<<10); err != nil {
		t.Fatal(err)
	}
	add("vdi-truncated", trunc, "vdi", true, FindPastEOF)
	return out
}

func vdiReadU32(t testing.TB, path string, off int64) uint32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b[off:])
}

func TestVDIFixtures(t *testing.T) {
	fxs := vdiFixtures(t, t.TempDir())
	ptRunFixtures(t, fxs)
	for _, fx := range fxs {
		if fx.qemuFormat == "-" {
			continue
		}
		t.Run("check/"+fx.name, func(t *testing.T) {
			img := openT(t, fx.path, OpenOptions{})
			r := img.Check()
			q := vdiQemuCheck(t, fx.path)
			if !r.Supported || r.Corruptions != q.Corruptions || r.Leaks != q.Leaks {
				t.Errorf("check %+v, qemu-img check %+v", r, q)
			}
		})
	}
}

// vdiQemuCheck runs qemu-img check --output=json (which exits non-zero on corruption).
func vdiQemuCheck(t *testing.T, path string) Report {
	t.Helper()
	qemutest.Need(t, "qemu-img")
	out, _ := qemutest.Output("qemu-img", "check", "--output=json", "-f", "vdi", path)
	var r Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("qemu-img check %s: %v: %s", path, err, out)
	}
	return r
}

func TestVDIDescribe(t *testing.T) {
	dir := t.TempDir()
	qemutest.Need(t, "qemu-img", "qemu-io")
	p := qemutest.Create(t, dir, "d.vdi", "vdi", "10M")
	qemutest.IO(t, p, "vdi", "write -P 0xaa 1M 4k", "write -P 0xbb 0 512")
	img := openT(t, p, OpenOptions{})
	info := img.Info()
	if info.ClusterSize != 1<<20 || info.VirtualSize != 10<<20 || info.Encrypted {
		t.Errorf("info %+v", info)
	}
	v := info.FormatSpecific.Data.(VDIInfo)
	if v.Text != "<<< QEMU VM Virtual Disk Image >>>" || v.Version != "1.1" || v.ImageType != "normal" ||
		v.HeaderSize != 0x180 || v.BlockMapOffset != 512 || v.DataOffset != 1024 || v.DiskSize != 10<<20 ||
		v.BlockSize != 1<<20 || v.Blocks != 10 || v.BlocksAllocated != 2 || v.LegacyGeometry.SectorSize != 512 ||
		len(v.UUID) != 36 || v.LinkUUID != "" || v.ParentModifyUUID != "" || v.LCHSGeometry != nil {
		t.Errorf("VDIInfo %+v", v)
	}
	// qemu allocated block 1 first (data index 0), then block 0 (index 1).
	e, err := img.Extent(0, 0)
	if err != nil || e.Kind != KindData || e.Length != 1<<20 || e.Offset != 1024+1<<20 {
		t.Errorf("extent 0: %+v %v", e, err)
	}
	e, err = img.Extent(1<<20, 0)
	if err != nil || e.Kind != KindData || e.Length != 1<<20 || e.Offset != 1024 {
		t.Errorf("extent 1M: %+v %v", e, err)
	}
	e, err = img.Extent(2<<20, 0)
	if err != nil || e.Kind != KindHole || e.Length != 8<<20 {
		t.Errorf("extent 2M: %+v %v", e, err)
	}
	// The UUID is printed as VBoxManage and qemu print it (RTUUID byte order).
	raw, _ := os.ReadFile(p)
	u := raw[0x188:0x198]
	if want := strings.ToLower(ptGUID(u)); v.UUID != want || v.UUID[14] != '4' {
		t.Errorf("uuid %s, want %s (a version 4 UUID)", v.UUID, want)
	}

	// A static image is one run of data, contiguous in the file.
	s := qemutest.Create(t, dir, "s.vdi", "vdi", "64M", "static=on")
	img = openT(t, s, OpenOptions{})
	if v := img.Info().FormatSpecific.Data.(VDIInfo); v.ImageType != "fixed" || v.BlocksAllocated != 64 {
		t.Errorf("static VDIInfo %+v", v)
	}
	e, err = img.Extent(0, 0)
	if err != nil || e.Kind != KindData || e.Length != 64<<20 || e.Offset != 1024 {
		t.Errorf("static extent: %+v %v", e, err)
	}
}

// TestVDIThirdParty: basic.vdi from dissect.hypervisor, whose guest SHA-256 the MANIFEST
// records.
func TestVDIThirdParty(t *testing.T) {
	p := qemutest.ThirdParty(t, "dissect.hypervisor/disk/vdi/basic.vdi.gz")
	img := openT(t, p, OpenOptions{})
	info := img.Info()
	if info.Format != VDI || info.VirtualSize != 10485760 || info.ClusterSize != 1<<20 || len(img.Safety()) != 0 {
		t.Fatalf("info %+v", info)
	}
	if v := info.FormatSpecific.Data.(VDIInfo); v.ImageType != "normal" || v.Flags != 0 {
		t.Errorf("VDIInfo %+v", v)
	}
	if r := img.Check(); !r.Clean() {
		t.Errorf("check %+v", r)
	}
	validate(t, img)
	if got := guestSHA256(t, img); got != "92d551781f9b62f3c8601ffd375cc7547efb1127e3cd2acc652f50f2d31afb8c" {
		t.Errorf("guest SHA-256 %s", got)
	}
	compareWithQemu(t, p, "vdi", info)
	// The pattern: the first MiB is zero, then each 4 KiB block n holds byte n mod 256.
	buf := make([]byte, 4096)
	for _, n := range []int64{256, 300, 2559} {
		if _, err := img.ReadAt(buf, n*4096); err != nil {
			t.Fatal(err)
		}
		if buf[0] != byte(n) || buf[4095] != byte(n) {
			t.Errorf("block %d holds %#x", n, buf[0])
		}
	}
}

// TestVDICheck: block maps qemu-img check calls corrupt are corrupt for glimpse too, with
// the same counts.
func TestVDICheck(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := qemutest.Create(t, dir, "base.vdi", "vdi", "8M")
	qemutest.IO(t, base, "vdi", "write -P 1 0 1M", "write -P 2 1M 1M", "write -P 3 4M 1M")
	cases := []struct {
		name  string
		patch func(p string)
		want  int    // corruptions
		msg   string // a fragment of a problem message
	}{
		{"clean", func(string) {}, 0, ""},
		{"duplicate", func(p string) { vdiPatch32(t, p, 0x200+4, 0) }, 1, "already used"},
		{"out-of-range", func(p string) { vdiPatch32(t, p, 0x200+6*4, 100) }, 1, "beyond the 8 blocks"},
		{"count", func(p string) { vdiPatch32(t, p, 0x184, 7) }, 1, "blocks allocated is 7"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := ptCopy(t, base, filepath.Join(t.TempDir(), "x.vdi"))
			tc.patch(p)
			img := openT(t, p, OpenOptions{})
			r := img.Check()
			q := vdiQemuCheck(t, p)
			if r.Corruptions != tc.want || q.Corruptions != tc.want {
				t.Errorf("corruptions %d, qemu-img %d, want %d: %+v", r.Corruptions, q.Corruptions, tc.want, r.Problems)
			}
			if tc.msg != "" && !strings.Contains(r.Problems[0].Message, tc.msg) {
				t.Errorf("problems %+v", r.Problems)
			}
		})
	}
	// Beyond qemu: a block stored past the end of the file.
	p := ptCopy(t, base, filepath.Join(dir, "past.vdi"))
	if err := os.Truncate(p, 1024+2<<20); err != nil {
		t.Fatal(err)
	}
	img := openT(t, p, OpenOptions{})
	if r := img.Check(); r.Corruptions != 1 || !strings.Contains(r.Problems[0].Message, "past the end") {
		t.Errorf("check %+v", r)
	}
	if !hasFinding(img.Safety(), FindPastEOF) {
		t.Errorf("safety %v", img.Safety())
	}
}

// vdiCrafted is a minimal valid dynamic VDI: 4 blocks of 1 MiB, blocks 0 and 2 allocated.
func vdiCrafted() []byte {
	b := make([]byte, 1024+2<<20)
	copy(b, "<<< Oracle VM VirtualBox Disk Image >>>\n")
	le := binary.LittleEndian
	le.PutUint32(b[0x40:], vdiSignature)
	le.PutUint32(b[0x44:], vdiVersion11)
	le.PutUint32(b[0x48:], 0x190)
	le.PutUint32(b[0x4c:], 1)
	copy(b[0x54:], "a comment")
	le.PutUint32(b[0x154:], 512)
	le.PutUint32(b[0x158:], 1024)
	le.PutUint32(b[0x168:], 512)
	le.PutUint64(b[0x170:], 4<<20)
	le.PutUint32(b[0x178:], 1<<20)
	le.PutUint32(b[0x180:], 4)
	le.PutUint32(b[0x184:], 2)
	copy(b[0x188:], "0123456789abcdef")
	copy(b[0x198:], "fedcba9876543210")
	le.PutUint32(b[0x1c8:], 16)
	le.PutUint32(b[0x1cc:], 16)
	le.PutUint32(b[0x1d0:], 63)
	le.PutUint32(b[0x1d4:], 512)
	for i, e := range []uint32{0, vdiUnallocated, 1, vdiDiscarded} {
		le.PutUint32(b[512+4*i:], e)
	}
	for i := range 1 << 20 {
		b[1024+i] = 0xa0
		b[1024+1<<20+i] = 0xb0
	}
	return b
}

func TestVDICrafted(t *testing.T) {
	b := vdiCrafted()
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "c.vdi"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	v := img.Info().FormatSpecific.Data.(VDIInfo)
	if v.LCHSGeometry == nil || v.LCHSGeometry.Sectors != 63 || v.Comment != "a comment" || v.Text != "<<< Oracle VM VirtualBox Disk Image >>>" {
		t.Errorf("VDIInfo %+v", v)
	}
	want := []Extent{
		{Start: 0, Length: 1 << 20, Kind: KindData, Offset: 1024},
		{Start: 1 << 20, Length: 1 << 20, Kind: KindHole, Offset: -1},
		{Start: 2 << 20, Length: 1 << 20, Kind: KindData, Offset: 1024 + 1<<20},
		{Start: 3 << 20, Length: 1 << 20, Kind: KindZero, Offset: -1},
	}
	for _, w := range want {
		if e, err := img.Extent(w.Start, 0); err != nil || e != w {
			t.Errorf("Extent(%d) = %+v, %v; want %+v", w.Start, e, err, w)
		}
	}
	validate(t, img)
	if r := img.Check(); !r.Clean() {
		t.Errorf("check %+v", r)
	}
	buf := make([]byte, 3<<20)
	if _, err := img.ReadAt(buf, 512<<10); err != nil {
		t.Fatal(err)
	}
	if buf[0] != 0xa0 || buf[512<<10] != 0 || buf[(1<<20)+(512<<10)] != 0xb0 || buf[len(buf)-1] != 0 {
		t.Errorf("guest bytes wrong")
	}

	// block extra data: each block is preceded by that many bytes.
	ex := vdiCrafted()
	binary.LittleEndian.PutUint32(ex[0x17c:], 512)
	binary.LittleEndian.PutUint32(ex[0x184:], 1)
	ex = ex[:1024+512+1<<20]
	img2, err := Open(bytes.NewReader(ex), int64(len(ex)), OpenOptions{Name: "x.vdi"})
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := img2.Extent(0, 0); e.Offset != 1024+512 || e.Length != 1<<20 {
		t.Errorf("extent with extra data %+v", e)
	}
	img2.Close()
}

// TestVDIHostile: nonsense headers are FormatErrors naming the field, never panics.
func TestVDIHostile(t *testing.T) {
	le := binary.LittleEndian
	cases := []struct {
		name  string
		patch func(b []byte)
		field string
	}{
		{"version", func(b []byte) { le.PutUint32(b[0x44:], 0x00010000) }, "version"},
		{"header-size", func(b []byte) { le.PutUint32(b[0x48:], 12) }, "header size"},
		{"type", func(b []byte) { le.PutUint32(b[0x4c:], 9) }, "image type"},
		{"bmap-unaligned", func(b []byte) { le.PutUint32(b[0x154:], 513) }, "block map offset"},
		{"bmap-in-header", func(b []byte) { le.PutUint32(b[0x154:], 0) }, "block map offset"},
		{"data-unaligned", func(b []byte) { le.PutUint32(b[0x158:], 1000) }, "data offset"},
		{"data-in-bmap", func(b []byte) { le.PutUint32(b[0x180:], 1000) }, "data offset"},
		{"sector-size", func(b []byte) { le.PutUint32(b[0x168:], 4096) }, "sector size"},
		{"block-size-zero", func(b []byte) { le.PutUint32(b[0x178:], 0) }, "block size"},
		{"block-size-odd", func(b []byte) { le.PutUint32(b[0x178:], 3<<20) }, "block size"},
		{"block-extra", func(b []byte) { le.PutUint32(b[0x17c:], 3) }, "block extra data"},
		{"too-many-blocks", func(b []byte) { le.PutUint32(b[0x180:], 0x40000000) }, "blocks in image"},
		{"disk-too-big", func(b []byte) { le.PutUint64(b[0x170:], 1<<62) }, "disk size"},
		{"disk-beyond-map", func(b []byte) { le.PutUint64(b[0x170:], 5<<20) }, "disk size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := vdiCrafted()
			tc.patch(b)
			_, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "h.vdi"})
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Format != VDI || fe.Field != tc.field || fe.File != "h.vdi" {
				t.Fatalf("error %v, want a FormatError on %q", err, tc.field)
			}
		})
	}
	// Not a VDI at all, declared as one.
	_, err := Open(bytes.NewReader(make([]byte, 4096)), 4096, OpenOptions{Format: VDI})
	if !errors.Is(err, ErrWrongFormat) {
		t.Errorf("zeros as vdi: %v", err)
	}
	// A block map entry far past the end reads as zeros, and Check reports it.
	b := vdiCrafted()
	le.PutUint32(b[512:], 0xfffffff0)
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := img.ReadAt(buf, 0); err != nil || !isZero(buf) {
		t.Errorf("read past EOF: %v", err)
	}
	if r := img.Check(); r.Corruptions == 0 {
		t.Errorf("check %+v", r)
	}
	// A block map that is cut short: reads that need it fail with a FormatError, Safety
	// says past-eof.
	short := vdiCrafted()[:600]
	le.PutUint32(short[0x180:], 100)
	le.PutUint64(short[0x170:], 100<<20)
	le.PutUint32(short[0x158:], 1024)
	img, err = Open(bytes.NewReader(short), int64(len(short)), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !hasFinding(img.Safety(), FindPastEOF) {
		t.Errorf("safety %v", img.Safety())
	}
	if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("read with a truncated block map: %v", err)
	}
	if r := img.Check(); r.CheckErrors == 0 {
		t.Errorf("check %+v", r)
	}
}

// TestVDIBlockMapCache: a block map larger than the page cache still reads right.
func TestVDIBlockMapCache(t *testing.T) {
	const blocks = vdiPageEntries*vdiMaxPages + 3*vdiPageEntries // more pages than kept
	bs := int64(vdiMinBlockSize)
	hdr := vdiCrafted()[:1024]
	le := binary.LittleEndian
	dataOff := int64(512 + 4*blocks)
	b := make([]byte, dataOff+4*bs)
	copy(b, hdr)
	le.PutUint32(b[0x158:], uint32(dataOff))
	le.PutUint32(b[0x178:], uint32(bs))
	le.PutUint32(b[0x180:], blocks)
	le.PutUint64(b[0x170:], uint64(blocks*bs))
	le.PutUint32(b[0x184:], 4)
	for i := range blocks {
		le.PutUint32(b[512+4*i:], vdiUnallocated)
	}
	// four blocks spread over distant pages, each holding its own number
	for k, blk := range []int{0, blocks / 3, 2 * blocks / 3, blocks - 1} {
		le.PutUint32(b[512+4*blk:], uint32(k))
		b[dataOff+int64(k)*bs] = byte(k + 1)
	}
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	one := make([]byte, 1)
	for round := range 3 {
		for k, blk := range []int{0, blocks / 3, 2 * blocks / 3, blocks - 1} {
			if _, err := img.ReadAt(one, int64(blk)*bs); err != nil || one[0] != byte(k+1) {
				t.Fatalf("round %d block %d: %v %d", round, blk, err, one[0])
			}
		}
		// walk every page so that the cache must evict
		for blk := int64(0); blk < blocks; blk += vdiPageEntries {
			if _, err := img.Extent(blk*bs, bs); err != nil {
				t.Fatal(err)
			}
		}
	}
	if r := img.Check(); !r.Clean() {
		t.Errorf("check %+v", r)
	}
	if c := img.(*disk).c.(*vdiCore); len(c.pages) > vdiMaxPages {
		t.Errorf("%d pages kept", len(c.pages))
	}
}

// TestVDIReadAllocs: reading guest data allocates nothing per call.
func TestVDIReadAllocs(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	p := qemutest.Create(t, t.TempDir(), "s.vdi", "vdi", "8M", "static=on")
	img := openT(t, p, OpenOptions{})
	buf := make([]byte, 1<<20)
	var off int64
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		off = (off + 1<<20 + 4096) % (8 << 20)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per ReadAt", allocs)
	}
}

func BenchmarkVDIRead(b *testing.B) {
	qemutest.Need(b, "qemu-img", "qemu-io")
	dir := b.TempDir()
	p := qemutest.Create(b, dir, "b.vdi", "vdi", "256M")
	qemutest.IO(b, p, "vdi", "write -P 0x5a 0 256M")
	img, err := OpenFile(p, OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, 4<<20)
	b.SetBytes(img.Size())
	for b.Loop() {
		for off := int64(0); off < img.Size(); off += int64(len(buf)) {
			if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
	}
}

func FuzzVDI(f *testing.F) {
	f.Add(vdiCrafted()[:8192])
	b := vdiCrafted()[:2048]
	binary.LittleEndian.PutUint32(b[0x17c:], 512)
	f.Add(b)
	if _, err := exec.LookPath("qemu-io"); (err == nil || qemutest.InCI()) && !ptFuzzWorker() {
		for _, fx := range vdiFixtures(f, f.TempDir()) {
			fuzzSeeds(f, fx.path)
		}
	}
	thirdPartySeed(f, "dissect.hypervisor/disk/vdi/basic.vdi.gz")
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, VDI)
	})
}
