package inspect

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"glimpse/internal/qemutest"
)

// ---- fixtures -------------------------------------------------------------------------

// vmdkOddWrites are qemu-io writes in odd places of a disk of size bytes (64 KiB grains,
// 32 MiB grain tables): the first and last sectors, across a grain boundary, a long run of
// grains, the last sector before a grain table boundary, and the partial last grain.
func vmdkOddWrites(size int64) []string {
	w := []string{
		"write -P 0x11 0 512",
		"write -P 0x22 65024 1024",
		fmt.Sprintf("write -P 0x99 %d 512", size-512),
	}
	if size >= 5<<20 {
		w = append(w, "write -P 0x44 1048576 3M")
	}
	if size > 32<<20 {
		w = append(w, "write -P 0x55 33553920 512", fmt.Sprintf("write -P 0x33 %d 1024", size-1536))
	}
	return w
}

// vmdkDescriptorText is a descriptor with the given create type and extent lines.
func vmdkDescriptorText(createType string, extents ...string) string {
	return "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"" + createType + "\"\n\n" +
		"# Extent description\n" + strings.Join(extents, "\n") + "\n\n# The Disk Data Base\n#DDB\n\n" +
		"ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n"
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// vmdkPatternFile writes n bytes of a position-dependent pattern.
func vmdkPatternFile(t testing.TB, path string, n int, seed byte) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/512) ^ seed
	}
	return writeFile(t, path, b)
}

// vmdkFixtures builds every vmdk variant: the subformats qemu writes (with adapter type,
// hardware version and zeroed grains), data in odd places, hand-written descriptors (vmfs,
// several flat extents, a ZERO extent, host paths), a delta disk, streamOptimized files
// with a footer, and a hosted sparse file whose descriptor names a host file. Each lists
// the findings it must have, and only those.
func vmdkFixtures(t testing.TB, dir string) []fixture {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	p := func(n string) string { return filepath.Join(dir, n) }
	var out []fixture
	add := func(name, path, qf string, readable bool, finds ...string) {
		out = append(out, fixture{name: name, path: path, qemuFormat: qf, format: VMDK, findings: finds, readable: readable})
	}
	hostile := []string{FindCreateType, FindHostExtent}

	// monolithicSparse: 32 MiB + 1 KiB, so a partial last grain and two grain tables.
	const odd = 32<<20 + 1024
	ms := qemutest.Create(t, dir, "sparse.vmdk", "vmdk", fmt.Sprint(odd))
	qemutest.IO(t, ms, "vmdk", vmdkOddWrites(odd)...)
	add("monolithicSparse", ms, "", true)

	opt := qemutest.Create(t, dir, "sparse-lsi.vmdk", "vmdk", fmt.Sprint(5<<20+512), "adapter_type=lsilogic", "hwversion=6")
	qemutest.IO(t, opt, "vmdk", vmdkOddWrites(5<<20+512)...)
	add("monolithicSparse-lsilogic-hw6", opt, "", true)

	zg := qemutest.Create(t, dir, "zeroed.vmdk", "vmdk", "10M", "zeroed_grain=on")
	qemutest.IO(t, zg, "vmdk", "write -P 0x66 0 1M", "write -z 131072 262144", "write -z 4194304 65536", "write -P 0x77 10484736 512")
	add("monolithicSparse-zeroed-grain", zg, "", true)

	// streamOptimized: qemu-io cannot write it in place; convert a written raw disk.
	raw := qemutest.Create(t, dir, "stream-src.raw", "raw", fmt.Sprint(odd))
	qemutest.IO(t, raw, "raw", vmdkOddWrites(odd)...)
	so := p("stream.vmdk")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, so)
	add("streamOptimized", so, "", true)

	qc := qemutest.Create(t, dir, "stream-src.qcow2", "qcow2", "3M")
	qemutest.IO(t, qc, "qcow2", "write -P 0x5a 0 64k", "write -P 0x5b 3145216 512")
	so2 := p("stream-lsi.vmdk")
	qemutest.Img(t, "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized,adapter_type=lsilogic,hwversion=8", qc, so2)
	add("streamOptimized-from-qcow2", so2, "", true)

	soEmpty := qemutest.Create(t, dir, "stream-empty.vmdk", "vmdk", "200M", "subformat=streamOptimized")
	add("streamOptimized-empty", soEmpty, "", true)

	// VMware's layout: the header says GD_AT_END and a footer holds the real one.
	foot := p("stream-footer.vmdk")
	vmdkAddFooter(t, so, foot, nil)
	add("streamOptimized-footer", foot, "", true)
	mis := p("stream-footer-mismatch.vmdk")
	vmdkAddFooter(t, so, mis, func(h []byte) { binary.LittleEndian.PutUint64(h[vmdkOffDescSize:], 19) })
	add("streamOptimized-footer-mismatch", mis, "", true, FindFooterMismatch)

	// A hosted sparse file whose descriptor also names /etc/passwd: qemu ignores the line,
	// other readers do not.
	hs := p("sparse-host-line.vmdk")
	vmdkRewriteDescriptor(t, ms, hs, func(d string) string {
		return strings.Replace(d, "# The Disk Data Base", "RW 8 FLAT \"/etc/passwd\" 0\n\n# The Disk Data Base", 1)
	})
	add("monolithicSparse-host-extent-line", hs, "", true, FindHostExtent)

	// Flat and split layouts: the descriptor names other files.
	mf := qemutest.Create(t, dir, "flat.vmdk", "vmdk", fmt.Sprint(3<<20+512), "subformat=monolithicFlat")
	qemutest.IO(t, mf, "vmdk", vmdkOddWrites(3<<20+512)...)
	add("monolithicFlat", mf, "", false, hostile...)

	const twoGB = 2<<30 + 3<<20 + 512
	ts := qemutest.Create(t, dir, "split.vmdk", "vmdk", fmt.Sprint(twoGB), "subformat=twoGbMaxExtentSparse")
	qemutest.IO(t, ts, "vmdk", append(vmdkOddWrites(twoGB), "write -P 0x88 2147483136 1024")...)
	add("twoGbMaxExtentSparse", ts, "", false, hostile...)
	// One extent file of it, uploaded alone: its descriptor is empty.
	add("twoGbMaxExtentSparse-extent-alone", p("split-s001.vmdk"), "-", true, FindCreateType, FindDescriptor)

	tf := qemutest.Create(t, dir, "splitflat.vmdk", "vmdk", fmt.Sprint(5<<20), "subformat=twoGbMaxExtentFlat")
	qemutest.IO(t, tf, "vmdk", vmdkOddWrites(5<<20)...)
	add("twoGbMaxExtentFlat", tf, "", false, hostile...)

	vmdkPatternFile(t, p("vmfs-flat.bin"), 2<<20, 0x31)
	vm := writeFile(t, p("vmfs.vmdk"), []byte(vmdkDescriptorText("vmfs", `RW 4096 VMFS "vmfs-flat.bin"`)))
	add("vmfs", vm, "", false, hostile...)

	vmdkPatternFile(t, p("multi-a.bin"), 1<<20, 0x42)
	vmdkPatternFile(t, p("multi-b.bin"), 100<<10, 0x24)
	mu := writeFile(t, p("multi.vmdk"), []byte(vmdkDescriptorText("twoGbMaxExtentFlat",
		`RW 100 FLAT "multi-a.bin" 0`, `RW 37 FLAT "multi-b.bin" 5`, `RW 1024 FLAT "multi-a.bin" 100`)))
	add("flat-several-extents", mu, "", false, hostile...)

	// qemu ignores ZERO extents, so it sees a smaller disk: a finding, and no comparison.
	ze := writeFile(t, p("zero-extent.vmdk"), []byte(vmdkDescriptorText("monolithicFlat",
		`RW 100 FLAT "multi-a.bin" 0`, `RW 300 ZERO`, `RW 64 FLAT "multi-b.bin" 0`)))
	add("flat-zero-extent", ze, "-", false, FindCreateType, FindHostExtent, FindDescriptor)

	pw := writeFile(t, p("passwd.vmdk"), []byte(vmdkDescriptorText("monolithicFlat", `RW 1 FLAT "/etc/passwd" 0`)))
	add("descriptor-etc-passwd", pw, "", false, hostile...)
	vmdkPatternFile(t, p("outside.bin"), 64<<10, 0x55)
	dd := writeFile(t, p("sub/dotdot.vmdk"), []byte(vmdkDescriptorText("monolithicFlat", `RW 128 FLAT "../outside.bin" 0`)))
	add("descriptor-dotdot", dd, "", false, hostile...)

	// vmfsSparse: a descriptor naming a VMFS sparse (COWD) extent, which qemu reads.
	vmdkCraftCOWDFile(t, p("vmfssparse-delta.vmdk"), 2048, 8, map[int]byte{0: 0x61, 3: 0x62, 255: 0x63})
	vs := writeFile(t, p("vmfssparse.vmdk"), []byte(vmdkDescriptorText("vmfsSparse", `RW 2048 VMFSSPARSE "vmfssparse-delta.vmdk"`)))
	add("vmfsSparse", vs, "", false, hostile...)

	// A hosted sparse header with capacity 0: qemu reads its descriptor as a descriptor file.
	vmdkPatternFile(t, p("capzero-flat.bin"), 1<<20, 0x17)
	cz := writeFile(t, p("capzero.vmdk"), vmdkCraft{capacity: 0, desc: vmdkDescriptorText("monolithicFlat", `RW 2048 FLAT "capzero-flat.bin" 0`)}.build())
	add("sparse-capacity-0-descriptor", cz, "", false, FindCreateType, FindHostExtent, FindDescriptor)

	// A delta disk and its parent.
	base := qemutest.Create(t, dir, "delta-base.vmdk", "vmdk", "4M")
	qemutest.IO(t, base, "vmdk", "write -P 0x01 0 2M", "write -P 0x02 4193792 512")
	delta := p("delta.vmdk")
	qemutest.Img(t, "create", "-q", "-f", "vmdk", "-b", "delta-base.vmdk", "-F", "vmdk", delta)
	qemutest.IO(t, delta, "vmdk", "write -P 0x03 65536 65536", "write -P 0x04 1048064 1024")
	add("delta-disk", delta, "", false, FindBackingFile)
	return out
}

// vmdkFixtureNeedsBacking lists the fixtures that read fully with AllowBacking.
var vmdkFixtureNeedsBacking = map[string]bool{
	"monolithicFlat": true, "twoGbMaxExtentSparse": true, "twoGbMaxExtentFlat": true, "vmfs": true,
	"flat-several-extents": true, "flat-zero-extent": true, "delta-disk": true, "sparse-capacity-0-descriptor": true,
	"vmfsSparse": true,
}

// vmdkCraftCOWD builds a VMFS sparse extent (magic COWD, qemu's VMDK3): sectors of disk,
// grains of granularity sectors, one grain directory at sector 1, grain tables of 4096
// entries after it, then the grains that grains names (each filled with its byte).
func vmdkCraftCOWD(sectors, granularity uint32, grains map[int]byte) []byte {
	le := binary.LittleEndian
	perGT := 4096 * granularity
	nGT := (sectors + perGT - 1) / perGT
	gdSectors := (nGT*4 + 511) / 512
	b := make([]byte, 512*(1+gdSectors+32*nGT))
	copy(b, vmdkCOWDMagic)
	le.PutUint32(b[4:], 1)
	le.PutUint32(b[8:], 3)
	le.PutUint32(b[12:], sectors)
	le.PutUint32(b[16:], granularity)
	le.PutUint32(b[20:], 1)
	le.PutUint32(b[24:], nGT)
	for i := uint32(0); i < nGT; i++ {
		le.PutUint32(b[512+4*i:], 1+gdSectors+32*i)
	}
	keys := slices.Sorted(maps.Keys(grains))
	for _, g := range keys {
		gt := 1 + gdSectors + 32*(uint32(g)/4096)
		le.PutUint32(b[int(gt)*512+4*(g%4096):], uint32(len(b)/512))
		b = append(b, bytes.Repeat([]byte{grains[g]}, int(granularity)*512)...)
	}
	return b
}

func vmdkCraftCOWDFile(t testing.TB, path string, sectors, granularity uint32, grains map[int]byte) string {
	return writeFile(t, path, vmdkCraftCOWD(sectors, granularity, grains))
}

// vmdkAddFooter turns a qemu streamOptimized file into VMware's layout: the header says
// GD_AT_END, and a footer (footer marker, header copy with the real gdOffset, end-of-stream
// marker) ends the file. mutate may change the footer's header.
func vmdkAddFooter(t testing.TB, src, dst string, mutate func(h []byte)) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%512 != 0 {
		b = append(b, make([]byte, 512-len(b)%512)...)
	}
	hdr := slices.Clone(b[:512])
	binary.LittleEndian.PutUint64(b[vmdkOffGD:], vmdkGDAtEnd)
	if mutate != nil {
		mutate(hdr)
	}
	mark := make([]byte, 512)
	binary.LittleEndian.PutUint64(mark, 1)
	binary.LittleEndian.PutUint32(mark[12:], vmdkMarkerFooter)
	b = append(b, mark...)
	b = append(b, hdr...)
	b = append(b, make([]byte, 512)...)
	writeFile(t, dst, b)
}

// vmdkRewriteDescriptor copies a hosted sparse file, changing its embedded descriptor.
func vmdkRewriteDescriptor(t testing.TB, src, dst string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	h := decodeVMDKHeader(b)
	off, n := int(h.DescriptorOffset)*512, int(h.DescriptorSize)*512
	text := edit(cstring(b[off : off+n]))
	if len(text) >= n {
		t.Fatalf("descriptor of %d bytes does not fit in %d", len(text), n)
	}
	clear(b[off : off+n])
	copy(b[off:], text)
	writeFile(t, dst, b)
}

// ---- crafted images -----------------------------------------------------------------

// vmdkCraft builds a small hosted sparse file by hand: 1 MiB (2048 sectors), 4 KiB grains,
// one grain table; grains 0 and 5 hold data. Fields left zero take those defaults, except
// capacity, which is taken as given when set through set.
type vmdkCraft struct {
	capacity uint64
	desc     string
	mut      func(b []byte) // changes the finished file
}

const vmdkCraftCapacity = 2048

func (c vmdkCraft) build() []byte {
	b := make([]byte, 24*512)
	copy(b, vmdkMagic)
	le := binary.LittleEndian
	le.PutUint32(b[vmdkOffVersion:], 1)
	le.PutUint32(b[vmdkOffFlags:], vmdkFlagNewlineTest)
	le.PutUint64(b[vmdkOffCapacity:], c.capacity)
	le.PutUint64(b[vmdkOffGrain:], 8)
	le.PutUint64(b[vmdkOffDescOff:], 1)
	le.PutUint64(b[vmdkOffDescSize:], 2)
	le.PutUint32(b[vmdkOffNumGTEs:], 512)
	le.PutUint64(b[vmdkOffGD:], 3)
	le.PutUint64(b[vmdkOffOverHead:], 8)
	copy(b[73:], "\n \r\n")
	desc := c.desc
	if desc == "" {
		desc = vmdkDescriptorText("monolithicSparse", `RW 2048 SPARSE "craft.vmdk"`)
	}
	copy(b[512:1536], desc)
	le.PutUint32(b[3*512:], 4)          // GD[0] -> GT at sector 4
	le.PutUint32(b[4*512:], 8)          // grain 0 at sector 8
	le.PutUint32(b[4*512+5*4:], 16)     // grain 5 at sector 16
	for i := 8 * 512; i < 24*512; i++ { // grain data
		b[i] = byte(i/512) | 0x80
	}
	if c.mut != nil {
		c.mut(b)
	}
	return b
}

func vmdkCrafted(mut func(b []byte)) []byte {
	return vmdkCraft{capacity: vmdkCraftCapacity, mut: mut}.build()
}

// vmdkCraftStream builds a VMware-style streamOptimized file: header with GD_AT_END,
// descriptor, compressed grains behind markers, a GT and a GD behind their markers, and a
// footer. grains maps grain index (64 KiB grains) to content; capacity is in sectors.
func vmdkCraftStream(capacity uint64, grains map[int][]byte, mut func(b []byte)) []byte {
	return vmdkCraftStreamRaw(capacity, grains, nil, mut)
}

func vmdkZlib(b []byte) []byte {
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(b)
	w.Close()
	return z.Bytes()
}

// vmdkCraftStreamRaw is vmdkCraftStream with some grains' compressed bytes given as they
// are (raw[g]); grain tables without grains are left out (GD entry 0), as VMware does.
func vmdkCraftStreamRaw(capacity uint64, grains, raw map[int][]byte, mut func(b []byte)) []byte {
	le := binary.LittleEndian
	hdr := make([]byte, 512)
	copy(hdr, vmdkMagic)
	le.PutUint32(hdr[vmdkOffVersion:], 3)
	le.PutUint32(hdr[vmdkOffFlags:], vmdkFlagNewlineTest|vmdkFlagCompressed|vmdkFlagMarkers)
	le.PutUint64(hdr[vmdkOffCapacity:], capacity)
	le.PutUint64(hdr[vmdkOffGrain:], 128)
	le.PutUint64(hdr[vmdkOffDescOff:], 1)
	le.PutUint64(hdr[vmdkOffDescSize:], 2)
	le.PutUint32(hdr[vmdkOffNumGTEs:], 512)
	le.PutUint64(hdr[vmdkOffOverHead:], 3)
	copy(hdr[73:], "\n \r\n")
	le.PutUint16(hdr[vmdkOffCompressAl:], vmdkCompressDeflate)
	b := slices.Clone(hdr)
	le.PutUint64(b[vmdkOffGD:], vmdkGDAtEnd)
	desc := make([]byte, 1024)
	copy(desc, vmdkDescriptorText("streamOptimized", fmt.Sprintf(`RW %d SPARSE "craft-stream.vmdk"`, capacity)))
	b = append(b, desc...)
	pad := func() {
		if len(b)%512 != 0 {
			b = append(b, make([]byte, 512-len(b)%512)...)
		}
	}
	nGT := (capacity + 128*512 - 1) / (128 * 512)
	gts := make([][]uint32, nGT)
	for i := range gts {
		gts[i] = make([]uint32, 512)
	}
	keys := make([]int, 0, len(grains))
	for g := range grains {
		keys = append(keys, g)
	}
	for g := range raw {
		keys = append(keys, g)
	}
	slices.Sort(keys)
	used := make([]bool, nGT)
	for _, g := range keys {
		payload := raw[g]
		if payload == nil {
			var z bytes.Buffer
			w := zlib.NewWriter(&z)
			w.Write(grains[g])
			w.Close()
			payload = z.Bytes()
		}
		gts[g/512][g%512] = uint32(len(b) / 512)
		used[g/512] = true
		m := make([]byte, 12)
		le.PutUint64(m, uint64(g)*128)
		le.PutUint32(m[8:], uint32(len(payload)))
		b = append(b, m...)
		b = append(b, payload...)
		pad()
	}
	gd := make([]uint32, nGT)
	for i, gt := range gts {
		if !used[i] {
			continue
		}
		m := make([]byte, 512)
		le.PutUint64(m, 4)
		le.PutUint32(m[12:], vmdkMarkerGT)
		b = append(b, m...)
		gd[i] = uint32(len(b) / 512)
		for _, e := range gt {
			b = le.AppendUint32(b, e)
		}
	}
	m := make([]byte, 512)
	le.PutUint64(m, 1)
	le.PutUint32(m[12:], vmdkMarkerGD)
	b = append(b, m...)
	gdSector := uint64(len(b) / 512)
	for _, e := range gd {
		b = le.AppendUint32(b, e)
	}
	pad()
	le.PutUint64(hdr[vmdkOffGD:], gdSector)
	m = make([]byte, 512)
	le.PutUint64(m, 1)
	le.PutUint32(m[12:], vmdkMarkerFooter)
	b = append(b, m...)
	b = append(b, hdr...)
	b = append(b, make([]byte, 512)...)
	if mut != nil {
		mut(b)
	}
	return b
}

// ---- helpers --------------------------------------------------------------------------

func vmdkCodes(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		if !slices.Contains(out, f.Code) {
			out = append(out, f.Code)
		}
	}
	slices.Sort(out)
	return out
}

func vmdkWantCodes(t *testing.T, name string, got []Finding, want ...string) {
	t.Helper()
	w := slices.Clone(want)
	slices.Sort(w)
	w = slices.Compact(w)
	if g := vmdkCodes(got); !slices.Equal(g, w) {
		t.Errorf("%s: findings %v, want %v\n%v", name, g, w, got)
	}
}

func vmdkOpenBytes(t *testing.T, b []byte) (Image, error) {
	t.Helper()
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "crafted.vmdk"})
	if err == nil {
		t.Cleanup(func() { img.Close() })
	}
	return img, err
}

func vmdkWantFormatError(t *testing.T, name string, b []byte, contains string) {
	t.Helper()
	_, err := vmdkOpenBytes(t, b)
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Errorf("%s: Open error %v, want a *FormatError", name, err)
		return
	}
	if !strings.Contains(err.Error(), contains) {
		t.Errorf("%s: error %q does not mention %q", name, err, contains)
	}
}

// vmdkCompareSparse checks that img reads exactly what `qemu-img convert -O raw` writes,
// without hashing the whole disk: qemu's raw output is a sparse file, so data extents are
// compared byte for byte and the rest is checked to be holes (or zeros) in qemu's output.
// This proves the same equality as comparing SHA-256 sums, at the cost of the data only.
func vmdkCompareSparse(t *testing.T, path, qemuFormat string, img Image) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	args := []string{"convert", "-U", "-O", "raw"}
	if qemuFormat != "" {
		args = append(args, "-f", qemuFormat)
	}
	qemutest.Img(t, append(args, path, out)...)
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() != img.Size() {
		t.Fatalf("%s: size %d, qemu-img converts %d bytes", path, img.Size(), st.Size())
	}
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	readBoth := func(off, n int64, zeros bool) {
		for done := int64(0); done < n; {
			k := min(int64(len(a)), n-done)
			if _, err := f.ReadAt(b[:k], off+done); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if zeros {
				clear(a[:k])
			} else if _, err := img.ReadAt(a[:k], off+done); err != nil && err != io.EOF {
				t.Fatalf("ReadAt(%d): %v", off+done, err)
			}
			if !bytes.Equal(a[:k], b[:k]) {
				i := 0
				for a[i] == b[i] {
					i++
				}
				t.Fatalf("%s: guest byte %d is %#x, qemu-img gives %#x", path, off+done+int64(i), a[i], b[i])
			}
			done += k
		}
	}
	for pos := int64(0); pos < img.Size(); {
		e, err := img.Extent(pos, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !e.ReadsZero() {
			readBoth(e.Start, e.Length, false)
		} else {
			for off := e.Start; off < e.End(); {
				data, hole, ok := seekDataHole(f, off)
				if !ok {
					readBoth(off, e.End()-off, true)
					break
				}
				if data >= e.End() {
					break
				}
				end := e.End()
				if hole > data {
					end = min(end, hole)
				}
				readBoth(data, end-data, true)
				off = end
			}
		}
		pos = e.End()
	}
}

// vmdkCompare compares the guest with qemu's: by SHA-256 for small disks, sparse-aware
// for large ones.
func vmdkCompare(t *testing.T, path, qemuFormat string, img Image) {
	t.Helper()
	if img.Size() <= 256<<20 {
		compareGuestWithQemu(t, path, qemuFormat, img)
	} else {
		vmdkCompareSparse(t, path, qemuFormat, img)
	}
}

func vmdkInfo(t *testing.T, img Image) VMDKInfo {
	t.Helper()
	fs := img.Info().FormatSpecific
	if fs == nil || fs.Type != VMDK {
		t.Fatalf("format-specific %+v", fs)
	}
	return fs.Data.(VMDKInfo)
}

// ---- tests ----------------------------------------------------------------------------

func TestVMDKFixtures(t *testing.T) {
	dir := t.TempDir()
	fx := vmdkFixtures(t, dir)
	for _, fx := range fx {
		t.Run(fx.name, func(t *testing.T) {
			img := openT(t, fx.path, OpenOptions{})
			if f := img.Info().Format; f != fx.format {
				t.Fatalf("format %s, want %s", f, fx.format)
			}
			vmdkWantCodes(t, fx.name, img.Safety(), fx.findings...)
			if fx.qemuFormat != "-" {
				compareWithQemu(t, fx.path, fx.qemuFormat, img.Info())
			}
			if fx.readable {
				validate(t, img)
				if fx.qemuFormat != "-" {
					vmdkCompare(t, fx.path, fx.qemuFormat, img)
					vmdkCompareCheck(t, fx.path, img)
				}
			} else {
				_, err := img.ReadAt(make([]byte, 4096), 0)
				if !errors.Is(err, ErrNotAllowed) {
					t.Fatalf("reading without AllowBacking: %v, want ErrNotAllowed", err)
				}
				r := img.Check()
				if r.CheckErrors == 0 && fx.name != "delta-disk" {
					t.Errorf("check of unopened extents reports no error: %+v", r)
				}
			}
			if vmdkFixtureNeedsBacking[fx.name] {
				bimg := openT(t, fx.path, OpenOptions{AllowBacking: true})
				validate(t, bimg)
				if fx.qemuFormat != "-" {
					vmdkCompare(t, fx.path, fx.qemuFormat, bimg)
					vmdkCompareCheck(t, fx.path, bimg)
				}
			}
		})
	}
	t.Run("details", func(t *testing.T) { vmdkFixtureDetails(t, fx) })
}

// vmdkCompareCheck requires a clean Check where qemu-img check finds no errors.
func vmdkCompareCheck(t *testing.T, path string, img Image) {
	t.Helper()
	out, err := qemutest.Output("qemu-img", "check", "-U", path)
	qemuClean := err == nil && strings.Contains(out, "No errors")
	r := img.Check()
	if !r.Supported {
		t.Fatal("vmdk check not supported")
	}
	if qemuClean != r.Clean() {
		t.Errorf("check: glimpse clean=%v %+v, qemu-img: %v %s", r.Clean(), r.Problems, err, out)
	}
}

func vmdkFixtureDetails(t *testing.T, fx []fixture) {
	get := func(name string) fixture {
		for _, f := range fx {
			if f.name == name {
				return f
			}
		}
		t.Fatalf("no fixture %s", name)
		return fixture{}
	}
	// adapter type, hardware version, header version and flags
	img := openT(t, get("monolithicSparse-lsilogic-hw6").path, OpenOptions{})
	vi := vmdkInfo(t, img)
	if vi.AdapterType != "lsilogic" || vi.HWVersion != "6" || vi.CreateType != "monolithicSparse" || vi.Header.Version != 1 {
		t.Errorf("info %+v, header %+v", vi, vi.Header)
	}
	if !slices.Contains(vi.Header.FlagNames, "redundant-gd") || !slices.Contains(vi.Header.FlagNames, "valid-newline-test") {
		t.Errorf("flags %v", vi.Header.FlagNames)
	}
	if img.Info().ClusterSize != 65536 {
		t.Errorf("cluster size %d", img.Info().ClusterSize)
	}
	// zeroed grains are KindZero, unwritten grains holes
	img = openT(t, get("monolithicSparse-zeroed-grain").path, OpenOptions{})
	if vmdkInfo(t, img).Header.Version != 2 {
		t.Error("zeroed-grain file is not header version 2")
	}
	for _, c := range []struct {
		off  int64
		kind Kind
	}{{0, KindData}, {131072, KindZero}, {4194304, KindZero}, {2 << 20, KindHole}, {10484736, KindData}} {
		e, err := img.Extent(c.off, 1)
		if err != nil || e.Kind != c.kind {
			t.Errorf("Extent(%d) = %+v, %v; want %v", c.off, e, err, c.kind)
		}
	}
	// long runs: the 3 MiB written at 1 MiB is one data extent; an untouched grain
	// table is one hole
	img = openT(t, get("monolithicSparse").path, OpenOptions{})
	if e, _ := img.Extent(1<<20, 0); e.Kind != KindData || e.Length < 3<<20 {
		t.Errorf("Extent(1M) = %+v, want one data run of 3 MiB", e)
	}
	// an unallocated grain table is one hole of numGTEsPerGT grains
	st, err := vmdkOpenBytes(t, vmdkCraftStream(4096*128, map[int][]byte{0: []byte("x")}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if seg, err := st.(*disk).c.(*vmdkCore).lookup(64 << 20); err != nil || seg.kind != KindHole || seg.length != 192<<20 {
		t.Errorf("lookup(64M) = %+v, %v: want one hole over every unallocated grain table (192 MiB)", seg, err)
	}
	// streamOptimized grains are KindCompressed
	img = openT(t, get("streamOptimized").path, OpenOptions{})
	if e, _ := img.Extent(0, 0); e.Kind != KindCompressed || e.Offset != -1 {
		t.Errorf("Extent(0) of streamOptimized = %+v", e)
	}
	if vi := vmdkInfo(t, img); vi.Header.Version != 3 || !vi.Extents[0].Compressed || vi.CreateType != "streamOptimized" {
		t.Errorf("streamOptimized info %+v", vi)
	}
	// descriptor files: extents, create type, CID
	img = openT(t, get("twoGbMaxExtentSparse").path, OpenOptions{})
	vi = vmdkInfo(t, img)
	if len(vi.Extents) != 2 || vi.Extents[0].Format != "SPARSE" || vi.Extents[0].VirtualSize != 2<<30 || vi.CreateType != "twoGbMaxExtentSparse" {
		t.Errorf("split info %+v", vi)
	}
	q := qemutest.Info(t, get("twoGbMaxExtentSparse").path, "")
	if !strings.Contains(string(q.FormatSpecific), fmt.Sprintf(`"cid": %d`, vi.CID)) {
		t.Errorf("CID %d not in qemu's %s", vi.CID, q.FormatSpecific)
	}
	bimg := openT(t, get("twoGbMaxExtentSparse").path, OpenOptions{AllowBacking: true})
	if bimg.Info().ClusterSize != 65536 || img.Info().ClusterSize != 0 {
		t.Errorf("cluster size with extents %d, without %d", bimg.Info().ClusterSize, img.Info().ClusterSize)
	}
	img = openT(t, get("flat-several-extents").path, OpenOptions{})
	vi = vmdkInfo(t, img)
	if len(vi.Extents) != 3 || vi.Extents[1].Offset != 5*512 || vi.Extents[1].Access != "RW" || img.Size() != (100+37+1024)*512 {
		t.Errorf("multi info %+v size %d", vi, img.Size())
	}
	// a zero extent reads as zeros
	img = openT(t, get("flat-zero-extent").path, OpenOptions{AllowBacking: true})
	if e, _ := img.Extent(100*512, 0); e.Kind != KindZero || e.Length != 300*512 {
		t.Errorf("zero extent %+v", e)
	}
	// host paths stay out of reach even when backing files are allowed
	for _, name := range []string{"descriptor-etc-passwd", "descriptor-dotdot"} {
		img = openT(t, get(name).path, OpenOptions{AllowBacking: true})
		if _, err := img.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s with AllowBacking: %v, want ErrNotAllowed", name, err)
		}
	}
	// the delta disk reads its parent at depth 1
	img = openT(t, get("delta-disk").path, OpenOptions{AllowBacking: true})
	if img.Info().BackingFilename != "delta-base.vmdk" || img.Info().BackingFormat != "vmdk" {
		t.Errorf("backing %q %q", img.Info().BackingFilename, img.Info().BackingFormat)
	}
	if e, _ := img.Extent(0, 0); e.Depth != 1 || e.Kind != KindData {
		t.Errorf("Extent(0) of delta = %+v, want data at depth 1", e)
	}
	if e, _ := img.Extent(65536, 0); e.Depth != 0 {
		t.Errorf("Extent(64k) of delta = %+v, want depth 0", e)
	}
}

// The footer: GD located from it, header/footer mismatches found, and qemu's footer
// checks mirrored.
func TestVMDKStreamFooter(t *testing.T) {
	// 1023 grains and one sector: the last grain is partial, and stored so.
	const capacity = 1023*128 + 1
	grains := map[int][]byte{0: bytes.Repeat([]byte("glimpse "), 8192), 3: bytes.Repeat([]byte{7}, 65536), 1023: bytes.Repeat([]byte("last"), 128)}
	b := vmdkCraftStreamRaw(capacity, grains, map[int][]byte{5: vmdkZlib([]byte("short grain"))}, nil)
	img, err := vmdkOpenBytes(t, b)
	if err != nil {
		t.Fatal(err)
	}
	vmdkWantCodes(t, "crafted stream", img.Safety())
	validate(t, img)
	if r := img.Check(); !r.Clean() {
		t.Errorf("check: %+v", r.Problems)
	}
	for g, want := range grains {
		got := make([]byte, len(want))
		if _, err := img.ReadAt(got, int64(g)*65536); err != nil || !bytes.Equal(got, want) {
			t.Errorf("grain %d: %v", g, err)
		}
	}
	// a grain that inflates short fails reads past its data, as in qemu
	if _, err := img.ReadAt(make([]byte, 100), 5*65536+50); !errors.Is(err, ErrInvalid) {
		t.Errorf("reading past a short grain: %v", err)
	}
	if _, err := img.ReadAt(make([]byte, 11), 5*65536); err != nil {
		t.Errorf("reading a short grain's data: %v", err)
	}
	vi := vmdkInfo(t, img)
	if !vi.Header.Footer || !vi.Header.GDAtEnd || vi.Header.GDOffset == vmdkGDAtEnd {
		t.Errorf("header info %+v", vi.Header)
	}

	le := binary.LittleEndian
	footHdr := func(b []byte) []byte { return b[len(b)-1024 : len(b)-512] }
	for _, c := range []struct {
		name string
		mut  func(b []byte)
		want []string
	}{
		{"capacity", func(b []byte) { le.PutUint64(footHdr(b)[vmdkOffCapacity:], 2048*128) }, []string{FindFooterMismatch, FindDescriptor}},
		{"descriptor", func(b []byte) { le.PutUint64(footHdr(b)[vmdkOffDescOff:], 2) }, []string{FindFooterMismatch, FindDescriptor, FindCreateType}},
		{"flags", func(b []byte) { le.PutUint32(footHdr(b)[vmdkOffFlags:], 0x30003) }, []string{FindFooterMismatch}},
		{"eos padding", func(b []byte) { b[len(b)-1] = 1 }, []string{FindFooterMismatch}},
	} {
		img, err := vmdkOpenBytes(t, vmdkCraftStream(capacity, grains, c.mut))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		vmdkWantCodes(t, c.name, img.Safety(), c.want...)
	}
	// qemu refuses these: "Invalid footer"
	for _, c := range []struct {
		name string
		mut  func(b []byte)
	}{
		{"no footer magic", func(b []byte) { copy(footHdr(b), "XXXX") }},
		{"footer marker type", func(b []byte) { le.PutUint32(b[len(b)-1536+12:], 2) }},
		{"eos type", func(b []byte) { le.PutUint32(b[len(b)-512+12:], 1) }},
		{"footer says GD_AT_END", func(b []byte) { le.PutUint64(footHdr(b)[vmdkOffGD:], vmdkGDAtEnd) }},
		{"truncated", func(b []byte) {}},
	} {
		b := vmdkCraftStream(capacity, grains, c.mut)
		if c.name == "truncated" {
			b = b[:len(b)-1024]
		}
		vmdkWantFormatError(t, c.name, b, "footer")
	}
	// a stream whose size is not known yet: the footer is not read, the header stands
	o := &opener{r: bytes.NewReader(b), size: unknownSize, name: "stream", probe: &probeData{head: b[:min(len(b), probeHead)], size: unknownSize}}
	c, err := openVMDK(o)
	if err != nil {
		t.Fatal(err)
	}
	if c.size() != capacity*512 {
		t.Errorf("streaming size %d", c.size())
	}
}

// Crafted hostile headers: qemu's refusals become FormatErrors, out-of-file structures
// findings, and nothing is allocated from an unchecked field.
func TestVMDKHostileHeaders(t *testing.T) {
	le := binary.LittleEndian
	ok, err := vmdkOpenBytes(t, vmdkCrafted(nil))
	if err != nil {
		t.Fatal(err)
	}
	vmdkWantCodes(t, "crafted", ok.Safety())
	validate(t, ok)
	if r := ok.Check(); !r.Clean() {
		t.Errorf("crafted check: %+v", r.Problems)
	}
	errs := []struct {
		name, want string
		mut        func(b []byte)
	}{
		{"capacity huge", "L1 size too big", func(b []byte) { le.PutUint64(b[vmdkOffCapacity:], 0x1efffffc1b000001) }},
		{"capacity overflow", "overflow", func(b []byte) {
			le.PutUint64(b[vmdkOffCapacity:], 1<<55-1)
			le.PutUint64(b[vmdkOffGrain:], 0x200000)
		}},
		{"numGTEsPerGT 0", "numGTEsPerGT", func(b []byte) { le.PutUint32(b[vmdkOffNumGTEs:], 0) }},
		{"numGTEsPerGT 513", "L2 table size too big", func(b []byte) { le.PutUint32(b[vmdkOffNumGTEs:], 513) }},
		{"numGTEsPerGT huge", "L2 table size too big", func(b []byte) { le.PutUint32(b[vmdkOffNumGTEs:], math.MaxUint32) }},
		{"grain 0", "grainSize", func(b []byte) { le.PutUint64(b[vmdkOffGrain:], 0) }},
		{"grain 3", "power of two", func(b []byte) { le.PutUint64(b[vmdkOffGrain:], 3) }},
		{"grain huge", "granularity", func(b []byte) { le.PutUint64(b[vmdkOffGrain:], 1<<40) }},
		{"version 0", "version", func(b []byte) { le.PutUint32(b[vmdkOffVersion:], 0) }},
		{"gd offset overflow", "gdOffset", func(b []byte) { le.PutUint64(b[vmdkOffGD:], 1<<62) }},
		{"GD_AT_END without footer", "footer", func(b []byte) { le.PutUint64(b[vmdkOffGD:], vmdkGDAtEnd) }},
		{"truncated header", "truncated", nil},
	}
	for _, c := range errs {
		b := vmdkCrafted(c.mut)
		if c.mut == nil {
			b = b[:300]
		}
		vmdkWantFormatError(t, c.name, b, c.want)
	}
	if _, err := vmdkOpenBytes(t, vmdkCrafted(func(b []byte) { le.PutUint32(b[vmdkOffVersion:], 4) })); !errors.Is(err, ErrUnsupported) {
		t.Errorf("version 4: %v, want ErrUnsupported", err)
	}
	finds := []struct {
		name string
		mut  func(b []byte)
		want []string
	}{
		{"descriptor past EOF", func(b []byte) { le.PutUint64(b[vmdkOffDescOff:], 100) }, []string{FindPastEOF, FindDescriptor, FindCreateType}},
		{"descriptor over 1 MiB", func(b []byte) { le.PutUint64(b[vmdkOffDescSize:], 4096) }, []string{FindPastEOF, FindDescriptor}},
		{"no descriptor", func(b []byte) { le.PutUint64(b[vmdkOffDescOff:], 0); le.PutUint64(b[vmdkOffDescSize:], 0) }, []string{FindDescriptor, FindCreateType}},
		{"gd past EOF", func(b []byte) { le.PutUint64(b[vmdkOffGD:], 1000) }, []string{FindPastEOF}},
		{"rgd past EOF", func(b []byte) {
			le.PutUint32(b[vmdkOffFlags:], vmdkFlagRGD|vmdkFlagNewlineTest)
			le.PutUint64(b[vmdkOffRGD:], 1<<20)
		}, []string{FindPastEOF}},
		{"overhead past EOF", func(b []byte) { le.PutUint64(b[vmdkOffOverHead:], 1<<30) }, []string{FindPastEOF}},
		{"capacity mismatch", func(b []byte) { le.PutUint64(b[vmdkOffCapacity:], 4096) }, []string{FindDescriptor}},
		{"createType vmfs", func(b []byte) { vmdkSetText(b, vmdkDescriptorText("vmfs", `RW 2048 SPARSE "x.vmdk"`)) }, []string{FindCreateType}},
		{"createType streamOptimized on a sparse header", func(b []byte) {
			vmdkSetText(b, vmdkDescriptorText("streamOptimized", `RW 2048 SPARSE "x.vmdk"`))
		}, []string{FindDescriptor}},
		{"extent names a path", func(b []byte) { vmdkSetText(b, vmdkDescriptorText("monolithicSparse", `RW 2048 SPARSE "../x.vmdk"`)) }, []string{FindHostExtent}},
		{"two extents", func(b []byte) {
			vmdkSetText(b, vmdkDescriptorText("monolithicSparse", `RW 2048 SPARSE "x.vmdk"`, `RW 2048 ZERO`))
		}, []string{FindHostExtent}},
		{"delta", func(b []byte) {
			vmdkSetText(b, strings.Replace(vmdkDescriptorText("monolithicSparse", `RW 2048 SPARSE "x.vmdk"`), "parentCID=ffffffff", "parentCID=12345678\nparentFileNameHint=\"/etc/base.vmdk\"", 1))
		}, []string{FindBackingFile}},
		{"not NUL-terminated", func(b []byte) {
			d := vmdkDescriptorText("monolithicSparse", `RW 2048 SPARSE "x.vmdk"`)
			vmdkSetText(b, d+strings.Repeat("#", 1024-len(d)))
		}, []string{FindDescriptor}},
		{"data after the NUL", func(b []byte) { b[1500] = 'x' }, []string{FindDescriptor}},
	}
	for _, c := range finds {
		img, err := vmdkOpenBytes(t, vmdkCrafted(c.mut))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		vmdkWantCodes(t, c.name, img.Safety(), c.want...)
		fuzzOpen(t, vmdkCrafted(c.mut), VMDK) // reads and checks stay well-behaved
	}
	// a GD past the end of the file reads as holes, as in qemu, and Check reports it
	img, _ := vmdkOpenBytes(t, vmdkCrafted(func(b []byte) { le.PutUint64(b[vmdkOffGD:], 1000) }))
	if e, err := img.Extent(0, 0); err != nil || e.Kind != KindHole {
		t.Errorf("GD past EOF: %+v %v", e, err)
	}
	if r := img.Check(); r.Corruptions == 0 {
		t.Errorf("GD past EOF: check %+v", r)
	}
	// the redundant GD is ignored while the primary is valid, and used when it is not
	for _, c := range []struct {
		name         string
		primary, rgd uint64
	}{{"primary valid, redundant garbage", 3, 20}, {"primary past EOF", 1000, 3}, {"primary on the header", 0, 3}} {
		b := vmdkCrafted(func(b []byte) {
			le.PutUint32(b[vmdkOffFlags:], vmdkFlagRGD|vmdkFlagNewlineTest)
			le.PutUint64(b[vmdkOffRGD:], c.rgd)
			le.PutUint64(b[vmdkOffGD:], c.primary)
		})
		img, err := vmdkOpenBytes(t, b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := make([]byte, 512)
		if _, err := img.ReadAt(got, 0); err != nil || got[0] != 8|0x80 {
			t.Errorf("%s: grain 0 reads %#x, %v", c.name, got[0], err)
		}
	}
	// sizes the GD of a huge disk by the file, not the header
	img, err = vmdkOpenBytes(t, vmdkCrafted(func(b []byte) { le.PutUint64(b[vmdkOffCapacity:], 1<<34) }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.ReadAt(make([]byte, 4096), 1<<42); err != nil {
		t.Errorf("read of a huge sparse disk: %v", err)
	}
}

// vmdkSetText replaces the crafted file's descriptor (sectors 1-2).
func vmdkSetText(b []byte, text string) {
	clear(b[512:1536])
	copy(b[512:1536], text)
}

// Check on images corrupted on purpose, against qemu-img check where qemu sees the fault.
func TestVMDKCheckCorrupted(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := qemutest.Create(t, dir, "clean.vmdk", "vmdk", "10M")
	qemutest.IO(t, src, "vmdk", "write -P 0x66 0 1M")
	le := binary.LittleEndian
	hdr := func(b []byte) vmdkHeader { return decodeVMDKHeader(b) }
	gte := func(b []byte, gd uint64, g int) int { // byte offset of grain g's entry
		gt := le.Uint32(b[gd*512:])
		return int(gt)*512 + g*4
	}
	cases := []struct {
		name      string
		mut       func(b []byte)
		qemuFails bool
		want      string
	}{
		{"grain past EOF", func(b []byte) { le.PutUint32(b[gte(b, hdr(b).GDOffset, 10):], 0x7fffff) }, true, "past the end"},
		{"two entries, one grain", func(b []byte) {
			o := gte(b, hdr(b).GDOffset, 0)
			le.PutUint32(b[o+11*4:], le.Uint32(b[o:]))
		}, false, "also used"},
		{"grain on the grain table", func(b []byte) {
			o := gte(b, hdr(b).GDOffset, 0)
			le.PutUint32(b[o+3*4:], uint32(o/512))
		}, false, "overlaps"},
		{"GD entry past EOF", func(b []byte) { le.PutUint32(b[hdr(b).GDOffset*512:], 0x7fffff) }, false, "points past the end"},
		{"redundant GT differs", func(b []byte) { le.PutUint32(b[gte(b, hdr(b).RGDOffset, 2):], 0) }, false, "differs"},
		{"redundant GD entry", func(b []byte) { le.PutUint32(b[hdr(b).RGDOffset*512:], 0) }, false, "redundant grain directory entry 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			c.mut(b)
			p := writeFile(t, filepath.Join(t.TempDir(), "bad.vmdk"), b)
			img := openT(t, p, OpenOptions{})
			r := img.Check()
			found := false
			for _, pr := range r.Problems {
				found = found || strings.Contains(pr.Message, c.want)
			}
			if r.Corruptions == 0 || !found {
				t.Errorf("check: %+v, want a corruption mentioning %q", r, c.want)
			}
			_, qerr := qemutest.Output("qemu-img", "check", "-U", p)
			if (qerr != nil) != c.qemuFails {
				t.Errorf("qemu-img check: %v (expected failure: %v)", qerr, c.qemuFails)
			}
			fuzzOpen(t, b, VMDK)
		})
	}
}

// Compressed grains that are corrupt fail reads with a FormatError, never a panic, a huge
// allocation or garbage.
func TestVMDKBadGrains(t *testing.T) {
	le := binary.LittleEndian
	grains := map[int][]byte{0: bytes.Repeat([]byte("x"), 65536), 1: bytes.Repeat([]byte("y"), 65536)}
	base := vmdkCraftStream(8*128, grains, nil)
	grain1 := int64(0)
	for off := int64(1536); off < int64(len(base)); off += 512 {
		if le.Uint64(base[off:]) == 128 && le.Uint32(base[off+8:]) > 0 && le.Uint32(base[off+8:]) < 65536 {
			grain1 = off
			break
		}
	}
	if grain1 == 0 {
		t.Fatal("grain 1 not found")
	}
	bomb := func() []byte { // a zlib stream inflating to 1 MiB, more than a grain
		var z bytes.Buffer
		w := zlib.NewWriter(&z)
		w.Write(make([]byte, 1<<20))
		w.Close()
		return z.Bytes()
	}()
	for _, c := range []struct {
		name string
		mut  func(b []byte)
	}{
		{"size 0", func(b []byte) { le.PutUint32(b[grain1+8:], 0) }},
		{"size huge", func(b []byte) { le.PutUint32(b[grain1+8:], math.MaxUint32) }},
		{"not zlib", func(b []byte) { b[grain1+12] = 0xff }},
		{"corrupt deflate", func(b []byte) { b[grain1+12+2] ^= 0xff; b[grain1+12+3] ^= 0xff }},
		{"checksum", func(b []byte) { b[grain1+12+int64(le.Uint32(b[grain1+8:]))-1] ^= 1 }},
		{"bomb", nil},
	} {
		b := slices.Clone(base)
		if c.mut == nil {
			b = vmdkCraftStreamRaw(8*128, map[int][]byte{0: grains[0]}, map[int][]byte{1: bomb}, nil)
		} else {
			c.mut(b)
		}
		img, err := vmdkOpenBytes(t, b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := make([]byte, 65536)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Errorf("%s: grain 0: %v", c.name, err)
		}
		_, err = img.ReadAt(got, 65536)
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Errorf("%s: grain 1 read: %v, want a FormatError", c.name, err)
		}
		_, err = img.ReadAt(got[:100], 65536+1000) // through the partial-read cache
		if !errors.As(err, &fe) {
			t.Errorf("%s: partial grain 1 read: %v, want a FormatError", c.name, err)
		}
		_ = img.Check()
	}
}

// The descriptor as qemu reads it: every difference is a finding.
func TestVMDKDescriptorDifferences(t *testing.T) {
	dir := t.TempDir()
	vmdkPatternFile(t, filepath.Join(dir, "d.bin"), 1<<20, 1)
	good := vmdkDescriptorText("monolithicFlat", `RW 2048 FLAT "d.bin" 0`)
	cases := []struct {
		name string
		text string
		want []string
	}{
		{"good", good, nil},
		{"blank line before the extent", strings.Replace(good, "# Extent description\n", "# Extent description\n\n", 1), []string{FindDescriptor}},
		{"createType in a comment first", "# createType=\"monolithicSparse\"\n" + good, []string{FindDescriptor}},
		{"parentFileNameHint in a comment", strings.Replace(good, "# The Disk Data Base", "# parentFileNameHint=\"/etc/shadow\"", 1), []string{FindDescriptor, FindBackingFile}},
		{"parentCID before CID", strings.Replace(strings.Replace(good, "CID=12345678\n", "", 1), "parentCID=ffffffff\n", "parentCID=ffffffff\nCID=12345678\n", 1), []string{FindDescriptor}},
		{"RDONLY extent", strings.Replace(good, "RW 2048", "RDONLY 2048", 1), []string{FindDescriptor}},
		{"lower-case access", strings.Replace(good, "RW 2048", "rw 2048", 1), []string{FindDescriptor}},
		{"unknown line", good + "hello world\n", []string{FindDescriptor}},
		{"duplicate createType", good + "createType=\"vmfs\"\n", []string{FindDescriptor}},
		{"non-ASCII", good + "ddb.comment = \"caf\xc3\xa9\"\n", []string{FindDescriptor}},
		{"FLAT without offset", strings.Replace(good, `"d.bin" 0`, `"d.bin"`, 1), []string{FindDescriptor}},
		{"no CID", strings.Replace(good, "CID=12345678\n", "", 1), []string{FindDescriptor}},
		{"no extents", vmdkDescriptorText("monolithicFlat"), []string{FindDescriptor}},
		{"no version line", strings.Replace(good, "version=1\n", "", 1), []string{FindDescriptor}},
	}
	for _, c := range cases {
		p := writeFile(t, filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".vmdk"), []byte(c.text))
		img, err := OpenFile(p, OpenOptions{Format: VMDK})
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		want := append([]string{FindCreateType, FindHostExtent}, c.want...)
		if c.name == "no extents" {
			want = []string{FindCreateType, FindDescriptor}
		}
		vmdkWantCodes(t, c.name, img.Safety(), want...)
		img.Close()
	}
	// qemu's extent scan, checked against qemu itself
	qemutest.Need(t, "qemu-img")
	p := writeFile(t, filepath.Join(dir, "dup.vmdk"), []byte(cases[1].text))
	img := openT(t, p, OpenOptions{})
	if q := qemutest.Info(t, p, ""); q.VirtualSize != 2*img.Size() {
		t.Errorf("qemu sees %d bytes, expected twice %d (the first extent read twice)", q.VirtualSize, img.Size())
	}
	// a descriptor text longer than glimpse parses
	long := good + strings.Repeat("# padding padding padding padding padding padding padding\n", maxDescriptorText/50)
	img, err := vmdkOpenBytes(t, []byte(long))
	if err != nil {
		t.Fatal(err)
	}
	vmdkWantCodes(t, "long", img.Safety(), FindCreateType, FindHostExtent, FindDescriptor)
	if !slices.ContainsFunc(img.Safety(), func(f Finding) bool { return strings.Contains(f.Message, "longer than") }) {
		t.Errorf("no finding says the text is too long: %v", img.Safety())
	}
}

// A descriptor of blank lines made qemu's emulated sscanf scan quadratic (found by the
// fuzzer's timeout); the scan is bounded and says so.
func TestVMDKBlankLinesScan(t *testing.T) {
	text := vmdkDescriptorText("vmfs") + strings.Repeat("\n", 60000) + "RW " + strings.Repeat("1", 4000) + " VMFS \"x\"\n"
	start := time.Now()
	img, err := vmdkOpenBytes(t, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	fuzzOpen(t, []byte(text), VMDK)
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v", d)
	}
	if !slices.ContainsFunc(img.Safety(), func(f Finding) bool { return strings.Contains(f.Message, "not determined") }) {
		t.Errorf("no finding about the undetermined scan: %v", img.Safety())
	}
}

// Compressed grains above 1 MiB are described, checked and reported, not read.
func TestVMDKHugeCompressedGrain(t *testing.T) {
	b := vmdkCraftStream(16*128, map[int][]byte{0: []byte("x")}, func(b []byte) {
		for _, off := range []int{0, len(b) - 1024} {
			binary.LittleEndian.PutUint64(b[off+vmdkOffGrain:], 4096)
		}
	})
	img, err := vmdkOpenBytes(t, b)
	if err != nil {
		t.Fatal(err)
	}
	vmdkWantCodes(t, "huge grain", img.Safety(), FindUnreadableSection)
	if _, err := img.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("read: %v, want ErrUnsupported", err)
	}
}

// A VMFS sparse (COWD) extent: on its own it is not an image qemu opens; behind a
// descriptor it is read, and a grain directory shorter than the disk fails reads beyond
// it, as in qemu.
func TestVMDKCOWD(t *testing.T) {
	dir := t.TempDir()
	cowd := vmdkCraftCOWD(4096, 1, map[int]byte{0: 1, 4095: 2})
	if _, err := vmdkOpenBytes(t, cowd); !errors.Is(err, ErrUnsupported) {
		t.Errorf("COWD alone: %v, want ErrUnsupported", err)
	}
	short := slices.Clone(cowd)
	binary.LittleEndian.PutUint32(short[24:], 0) // l1dir_size 0
	writeFile(t, filepath.Join(dir, "short.vmdk"), short)
	writeFile(t, filepath.Join(dir, "ok.vmdk"), cowd)
	for _, c := range []struct {
		extent string
		fails  bool
	}{{"ok.vmdk", false}, {"short.vmdk", true}} {
		p := writeFile(t, filepath.Join(dir, "d-"+c.extent), []byte(vmdkDescriptorText("vmfsSparse", `RW 4096 VMFSSPARSE "`+c.extent+`"`)))
		img := openT(t, p, OpenOptions{AllowBacking: true})
		got := make([]byte, 512)
		_, err := img.ReadAt(got, 4095*512)
		if c.fails != (err != nil) || (err == nil && got[0] != 2) {
			t.Errorf("%s: read %#x, %v", c.extent, got[0], err)
		}
		if c.fails {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Errorf("%s: %v, want a FormatError", c.extent, err)
			}
			vmdkWantCodes(t, c.extent, img.Safety(), FindCreateType, FindHostExtent, FindDescriptor)
		}
		_ = img.Check()
	}
	for _, g := range []uint32{0, 3, 1 << 30} {
		bad := slices.Clone(cowd)
		binary.LittleEndian.PutUint32(bad[16:], g)
		writeFile(t, filepath.Join(dir, "bad.vmdk"), bad)
		p := writeFile(t, filepath.Join(dir, "d-bad.vmdk"), []byte(vmdkDescriptorText("vmfsSparse", `RW 4096 VMFSSPARSE "bad.vmdk"`)))
		img := openT(t, p, OpenOptions{AllowBacking: true})
		var fe *FormatError
		if _, err := img.ReadAt(make([]byte, 512), 0); !errors.As(err, &fe) {
			t.Errorf("granularity %d: %v, want a FormatError", g, err)
		}
	}
}

func TestVMDKProbe(t *testing.T) {
	for _, c := range []struct {
		text string
		want bool
	}{
		{"# Disk DescriptorFile\nversion=1\n", true},
		{"\n   \n#x\nversion=3\r\n", false}, // qemu: a blank line that is not spaces stops the probe
		{"   \r\n# c\nversion=2\n", true},
		{"createType=\"x\"\nversion=1\n", false},
		{"KDMV", true},
		{"COWD", true},
		{"version=4\n", false},
	} {
		p := &probeData{head: []byte(c.text), tail: []byte(c.text), size: int64(len(c.text))}
		if got := probeVMDK(p); got != c.want {
			t.Errorf("probe %q = %v", c.text, got)
		}
	}
}

func TestVMDKThirdParty(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	// iotest 059: a 16 GiB streamOptimized file, header version 3, with a pattern.
	t.Run("iotest-version3", func(t *testing.T) {
		p := qemutest.ThirdParty(t, "qemu-iotests/iotest-version3.vmdk.bz2")
		img := openT(t, p, OpenOptions{})
		vi := vmdkInfo(t, img)
		if img.Size() != 16<<30 || img.Info().ClusterSize != 65536 || vi.Header.Version != 3 || vi.CreateType != "streamOptimized" || !vi.Header.GDAtEnd {
			t.Errorf("info %+v header %+v", img.Info(), vi.Header)
		}
		vmdkWantCodes(t, "iotest-version3", img.Safety())
		buf := make([]byte, 512)
		for i := int64(0); i < 100; i++ {
			if _, err := img.ReadAt(buf, i*655360+i*512); err != nil {
				t.Fatal(err)
			}
			if want := bytes.Repeat([]byte{byte(i%10) + '0'}, 512); !bytes.Equal(buf, want) {
				t.Fatalf("offset %d: %q…, want %q", i*655360+i*512, buf[:8], want[:8])
			}
		}
		validate(t, img)
		compareWithQemu(t, p, "", img.Info())
		vmdkCompareSparse(t, p, "", img)
		if r := img.Check(); !r.Clean() {
			t.Errorf("check %+v", r.Problems)
		}
		vmdkManifest(t, img, "0859bb3397bc1d30fa979c80a289ce98bfd6c1141a64594d6f3cc8cd68218faf")
	})
	t.Run("afl9", func(t *testing.T) {
		p := qemutest.ThirdParty(t, "qemu-iotests/afl9.vmdk.bz2")
		f, _ := os.Open(p)
		defer f.Close()
		st, _ := f.Stat()
		if got, _ := Probe(f, st.Size()); got != VMDK {
			t.Errorf("probe %s", got)
		}
		_, err := OpenFile(p, OpenOptions{})
		var fe *FormatError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "L1 size too big") || fe.Field != "capacity" {
			t.Errorf("Open: %v, want a FormatError like qemu's \"L1 size too big\"", err)
		}
	})
	for _, c := range []struct {
		rel, sha string
		size     int64
	}{
		{"cot/input.vmdk", "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14", 1 << 30},
		{"cot/blank.vmdk", "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767", 512 << 20},
		{"cot/ubuntu.2.0-disk1.vmdk", "ebfb4ef19ae410f190327b5ebd312711263bc7579970e87d9c1e2d84e06b3c25", 8 << 30},
	} {
		t.Run(c.rel, func(t *testing.T) {
			p := qemutest.ThirdParty(t, c.rel)
			img := openT(t, p, OpenOptions{})
			if img.Size() != c.size || vmdkInfo(t, img).CreateType != "streamOptimized" {
				t.Errorf("size %d, info %+v", img.Size(), vmdkInfo(t, img))
			}
			vmdkWantCodes(t, c.rel, img.Safety())
			validate(t, img)
			compareWithQemu(t, p, "", img.Info())
			vmdkCompareSparse(t, p, "", img)
			if r := img.Check(); !r.Clean() {
				t.Errorf("check %+v", r.Problems)
			}
			vmdkManifest(t, img, c.sha)
		})
	}
	t.Run("sesparse", func(t *testing.T) {
		p := qemutest.ThirdParty(t, "dissect.hypervisor/disk/vmdk/sesparse.vmdk.gz")
		f, _ := os.Open(p)
		defer f.Close()
		st, _ := f.Stat()
		if got, _ := Probe(f, st.Size()); got != Raw {
			t.Errorf("probe %s, qemu says raw", got)
		}
		img, err := OpenFile(p, OpenOptions{Format: VMDK})
		if err == nil {
			img.Close()
			t.Fatal("seSparse opened as vmdk")
		}
		if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrInvalid) {
			t.Errorf("Open: %v", err)
		}
	})
}

// vmdkManifest checks the MANIFEST's SHA-256 of the whole guest. Hashing tens of GiB of
// zeros takes about 2 s per GiB here, so disks above 1 GiB are hashed only with
// GLIMPSE_FULL_HASH=1; vmdkCompareSparse has already shown they read byte for byte like
// qemu-img convert, whose output the MANIFEST hashes.
func vmdkManifest(t *testing.T, img Image, want string) {
	t.Helper()
	if img.Size() > 1<<30 && os.Getenv("GLIMPSE_FULL_HASH") == "" {
		t.Logf("size %d: MANIFEST hash skipped (set GLIMPSE_FULL_HASH=1)", img.Size())
		return
	}
	if got := guestSHA256(t, img); got != want {
		t.Errorf("guest SHA-256 %s, MANIFEST says %s", got, want)
	}
}

// Reads from many goroutines agree with a sequential read (run with -race).
func TestVMDKConcurrentReads(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	raw := qemutest.Create(t, dir, "c.raw", "raw", "8M")
	var cmds []string
	for i := 0; i < 60; i++ {
		cmds = append(cmds, fmt.Sprintf("write -P %d %d %d", i+1, i*131072+i*512, 70000))
	}
	qemutest.IO(t, raw, "raw", cmds...)
	so := filepath.Join(dir, "c-stream.vmdk")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, so)
	sp := filepath.Join(dir, "c-sparse.vmdk")
	qemutest.Img(t, "convert", "-f", "raw", "-O", "vmdk", raw, sp)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{so, sp} {
		img := openT(t, p, OpenOptions{})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(seed uint64) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, 1))
				buf := make([]byte, 200000)
				for i := 0; i < 200; i++ {
					off := r.Int64N(int64(len(want)))
					n := min(int64(r.IntN(len(buf))+1), int64(len(want))-off)
					if _, err := img.ReadAt(buf[:n], off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf[:n], want[off:off+n]) {
						errs <- fmt.Errorf("%s: ReadAt(%d, %d) differs", p, off, n)
						return
					}
				}
			}(uint64(w))
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}

// The data path allocates nothing once warm.
func TestVMDKReadAllocs(t *testing.T) {
	if vmdkRace {
		t.Skip("sync.Pool drops items under the race detector")
	}
	b := vmdkCraftStream(64*128, map[int][]byte{0: bytes.Repeat([]byte("ab"), 32768), 2: bytes.Repeat([]byte("c"), 65536)}, nil)
	stream, err := vmdkOpenBytes(t, b)
	if err != nil {
		t.Fatal(err)
	}
	sparse, err := vmdkOpenBytes(t, vmdkCrafted(nil))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	for _, c := range []struct {
		name string
		img  Image
		off  int64
		n    int
	}{
		{"compressed grain", stream, 0, 65536},
		{"compressed partial", stream, 2*65536 + 100, 1000},
		{"hole", stream, 5 * 65536, 65536},
		{"sparse data", sparse, 0, 4096},
		{"sparse hole", sparse, 8192, 4096},
	} {
		c.img.ReadAt(buf[:c.n], c.off)
		if a := testing.AllocsPerRun(50, func() { c.img.ReadAt(buf[:c.n], c.off) }); a >= 1 {
			t.Errorf("%s: %.1f allocations per read", c.name, a)
		}
		if a := testing.AllocsPerRun(50, func() { c.img.Extent(c.off, 0) }); a >= 1 {
			t.Errorf("%s: %.1f allocations per Extent", c.name, a)
		}
	}
}

func FuzzVMDK(f *testing.F) {
	f.Add(vmdkCrafted(nil))
	f.Add(vmdkCraftStream(16*128, map[int][]byte{0: []byte("hello"), 3: bytes.Repeat([]byte{1}, 65536)}, nil))
	f.Add([]byte(vmdkDescriptorText("monolithicFlat", `RW 2048 FLAT "x.bin" 0`, `RW 10 ZERO`)))
	f.Add([]byte(vmdkDescriptorText("twoGbMaxExtentSparse", `RW 2048 SPARSE "a.vmdk"`, "", `RW 4096 VMFS "b"`)))
	f.Add(vmdkCraft{capacity: 0, desc: vmdkDescriptorText("vmfs", `RW 8 VMFS "f"`)}.build())
	if _, err := exec.LookPath("qemu-img"); (err == nil || qemutest.InCI()) && !vmdkFuzzWorker() {
		for _, fx := range vmdkFixtures(f, f.TempDir()) {
			fuzzSeeds(f, fx.path)
		}
	}
	thirdPartySeed(f, "qemu-iotests/iotest-version3.vmdk.bz2", "qemu-iotests/afl9.vmdk.bz2", "cot/input.vmdk",
		"cot/blank.vmdk", "cot/ubuntu.2.0-disk1.vmdk")
	fuzzSeeds(f, vmdkTestdata()...)
	f.Add(vmdkCraftCOWD(4096, 1, map[int]byte{0: 1, 7: 2}))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, VMDK)
		vmdkFuzzCOWD(t, data)
	})
}

// vmdkFuzzCOWD reads a COWD extent the way a vmfsSparse descriptor's extent is read (only
// reachable with AllowBacking, so fuzzOpen alone never gets there).
func vmdkFuzzCOWD(t *testing.T, data []byte) {
	if len(data) < 4 || string(data[:4]) != vmdkCOWDMagic {
		return
	}
	sp, err := openVMDKCOWD(bytes.NewReader(data), int64(len(data)), "fuzz")
	if err != nil || sp.capacity == 0 {
		return
	}
	c := &vmdkCore{virtual: sp.capacity, extents: []*vmdkExtent{{length: sp.capacity, kind: vmdkExtSparse, sp: sp}}}
	d := &disk{format: VMDK, name: "fuzz", c: c, info: Info{VirtualSize: sp.capacity}}
	_ = d.Check()
	buf := make([]byte, 64<<10)
	for pos, steps := int64(0), 0; pos < sp.capacity && steps < 4096; steps++ {
		e, err := d.Extent(pos, 0)
		if err != nil {
			return
		}
		if e.Start != pos || e.Length <= 0 || e.End() > sp.capacity {
			t.Fatalf("Extent(%d) = %+v does not tile [0,%d)", pos, e, sp.capacity)
		}
		n, err := d.ReadAt(buf[:min(int64(len(buf)), e.Length)], pos)
		if err == nil && e.ReadsZero() && !isZero(buf[:n]) {
			t.Fatalf("zero extent %+v reads non-zero", e)
		}
		pos = e.End()
	}
}

// vmdkFuzzWorker reports whether this process is a fuzzing worker, which gets its inputs
// from the coordinator: building the seed images there only eats fuzzing time.
func vmdkFuzzWorker() bool {
	fl := flag.Lookup("test.fuzzworker")
	return fl != nil && fl.Value.String() == "true"
}

// vmdkTestdata lists the regression inputs kept in testdata/vmdk.
func vmdkTestdata() []string {
	m, _ := filepath.Glob(filepath.Join("testdata", "vmdk", "*"))
	return m
}

// Every file in testdata/vmdk (fuzzer finds, kept as regressions) opens or fails cleanly.
func TestVMDKRegressions(t *testing.T) {
	for _, p := range vmdkTestdata() {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(p), func(t *testing.T) {
			start := time.Now()
			fuzzOpen(t, b, VMDK)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// BenchmarkVMDKStreamRead reads a streamOptimized image of 256 MiB of compressible data,
// sequentially and from 4 goroutines (as the converter does). qemu-img convert -O raw of
// the same file runs once for comparison: the metrics give qemu-img's wall and CPU time
// (user+system) and ours per read of the whole disk, since on a shared machine CPU time
// is the steadier comparison.
func BenchmarkVMDKStreamRead(b *testing.B) {
	qemutest.Need(b, "qemu-img")
	dir := b.TempDir()
	const size = 256 << 20
	raw := filepath.Join(dir, "bench.raw")
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	words := []string{"glimpse ", "vmdk ", "stream ", "optimized ", "grain ", "\x00\x00\x00\x00", "qemu "}
	for i := 0; i < size; {
		if r.IntN(4) == 0 { // incompressible stretch
			n := min(r.IntN(2048), size-i)
			for j := 0; j < n; j++ {
				data[i+j] = byte(r.Uint32())
			}
			i += n
			continue
		}
		w := words[r.IntN(len(words))]
		i += copy(data[i:], w)
	}
	writeFile(b, raw, data)
	so := filepath.Join(dir, "bench.vmdk")
	qemutest.Img(b, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, so)
	cmd := exec.Command("qemu-img", "convert", "-f", "vmdk", "-O", "raw", so, filepath.Join(dir, "qemu.raw"))
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("qemu-img convert: %v %s", err, out)
	}
	qemuWall := time.Since(start).Seconds()
	qemuCPU := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	img, err := OpenFile(so, OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			b.SetBytes(size)
			const chunk = 1 << 20
			cpu0 := vmdkCPUTime()
			for b.Loop() {
				var wg sync.WaitGroup
				var next atomic.Int64
				for w := 0; w < workers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, chunk)
						for {
							off := next.Add(chunk) - chunk
							if off >= size {
								return
							}
							if _, err := img.ReadAt(buf, off); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			}
			cpu := (vmdkCPUTime() - cpu0).Seconds() / float64(b.N)
			b.ReportMetric(qemuWall, "qemu-wall-s")
			b.ReportMetric(qemuCPU, "qemu-cpu-s")
			b.ReportMetric(cpu, "cpu-s/op")
			b.ReportMetric(qemuWall/(b.Elapsed().Seconds()/float64(b.N)), "x-qemu-wall")
		})
	}
}

// vmdkCPUTime is the process's user and system CPU time so far.
func vmdkCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
