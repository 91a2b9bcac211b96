package convert

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// TestVDIWriterMatrix converts every readable source format to a dynamic vdi (and the raw
// and qcow2 sources to a static one too).
func TestVDIWriterMatrix(t *testing.T) {
	vxMatrix(t, inspect.VDI, [][]string{nil, {"static", "on"}}, func(n int64, _ []string) (int64, error) { return n, nil })
}

// vdiInfoCheck checks glimpse's vdi detail: the image type, the block counts, the data
// offset on a MiB boundary, the UUIDs, no parent, qemu's geometry.
func vdiInfoCheck(static bool, size, allocated int64) func(any) error {
	return func(d any) error {
		vi, ok := d.(inspect.VDIInfo)
		if !ok {
			return fmt.Errorf("detail %T", d)
		}
		typ, blocks := "normal", (size+vdiwBlockSize-1)/vdiwBlockSize
		if static {
			typ, allocated = "fixed", blocks
		}
		switch {
		case vi.ImageType != typ || vi.Version != "1.1" || vi.HeaderSize != vdiwHeaderSize || vi.Text != "<<< QEMU VM Virtual Disk Image >>>":
			return fmt.Errorf("type %s, version %s, header size %#x, text %q", vi.ImageType, vi.Version, vi.HeaderSize, vi.Text)
		case int64(vi.Blocks) != blocks || allocated >= 0 && int64(vi.BlocksAllocated) != allocated || vi.BlockSize != 1<<20 || vi.DiskSize != uint64(size):
			return fmt.Errorf("%d blocks, %d allocated, block size %d, disk size %d; want %d, %d, 1 MiB, %d", vi.Blocks, vi.BlocksAllocated, vi.BlockSize, vi.DiskSize, blocks, allocated, size)
		case vi.BlockMapOffset != 0x200 || vi.DataOffset%(1<<20) != 0 || int64(vi.DataOffset) < 0x200+4*blocks:
			return fmt.Errorf("block map at %#x, data at %#x", vi.BlockMapOffset, vi.DataOffset)
		case vi.UUID != vxFixedUUID || vi.ModifyUUID == vi.UUID || vi.LinkUUID != "" || vi.ParentModifyUUID != "":
			return fmt.Errorf("UUIDs %s, %s, %s, %s", vi.UUID, vi.ModifyUUID, vi.LinkUUID, vi.ParentModifyUUID)
		case vi.LegacyGeometry != (inspect.VDIGeometry{SectorSize: 512}) || vi.LCHSGeometry != nil:
			return fmt.Errorf("geometry %+v, %+v", vi.LegacyGeometry, vi.LCHSGeometry)
		}
		return nil
	}
}

// TestVDIWriterSizes: static and dynamic images of disks whose size is not a multiple of
// the 1 MiB block (or of a sector, which qemu rounds up), with data in the first and last
// sectors and across block boundaries, an empty disk, -S 0, and a sparse 1 TiB disk whose
// dynamic file holds two blocks.
func TestVDIWriterSizes(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	cases := []struct {
		name      string
		size      int64
		at        []int64
		opt       Options
		allocated int64 // dynamic
	}{
		{name: "one-sector", size: 512, at: []int64{0}, allocated: 1},
		{name: "odd-bytes", size: 1000, at: []int64{488}, allocated: 1},
		{name: "partial-block", size: 3<<20 + 1536, at: []int64{0, 1<<20 - 512, 3<<20 + 1024}, allocated: 2},
		{name: "boundaries", size: 9 << 20, at: []int64{2<<20 - 256, 5 << 20, 9<<20 - 512}, allocated: 4},
		{name: "empty", size: 5<<20 + 512},
		{name: "fully-allocated", size: 2<<20 + 512, at: []int64{4096}, opt: Options{FullyAllocated: true}, allocated: 3},
		{name: "sparse-1T", size: 1 << 40, at: []int64{0, 1<<40 - 512}, allocated: 2},
	}
	var jobs []func() []error
	for _, c := range cases {
		p, img := vxRawSource(t, dir, c.name+".raw", c.size, c.at...)
		for _, static := range []bool{false, true} {
			if static && c.size > 1<<30 {
				continue
			}
			jobs = append(jobs, func() []error {
				out := filepath.Join(dir, fmt.Sprintf("%s.%v.vdi", c.name, static))
				kv := []string{"static", "off"}
				if static {
					kv[1] = "on"
				}
				if err := vxConvert(inspect.VDI, img, out, c.opt, kv...); err != nil {
					return []error{err}
				}
				defer os.Remove(out)
				size := alignUp(c.size, 512)
				w := vxWant{format: inspect.VDI, size: size, src: p, srcFormat: "raw", n: c.size,
					info: vdiInfoCheck(static, size, c.allocated)}
				if c.size > 1<<30 {
					w.srcImg, w.spots = img, c.at
				} else {
					var err error
					if w.sha, _, err = vxFileSHA(p, -1); err != nil {
						return []error{err}
					}
				}
				errs := vxCheckOutput(out, w)
				var st syscall.Stat_t
				if err := syscall.Stat(out, &st); err != nil || st.Blocks*512 > 4<<20+(c.allocated<<20) {
					errs = append(errs, fmt.Errorf("%s: %d bytes on disk for %d data blocks (%v)", out, st.Blocks*512, c.allocated, err))
				}
				return errs
			})
		}
	}
	vxParallel(t, jobs)
}

// TestVDIWriterLayout reads the block map back: dynamic blocks numbered in guest order,
// unallocated ones 0xffffffff, the static map the identity; the file ends after the last
// block; the same options give the same bytes.
func TestVDIWriterLayout(t *testing.T) {
	dir := t.TempDir()
	_, img := vxRawSource(t, dir, "src.raw", 6<<20+512, 4<<20, 1<<20, 6<<20)
	for _, static := range []string{"off", "on"} {
		out := filepath.Join(dir, "out-"+static+".vdi")
		if err := vxConvert(inspect.VDI, img, out, Options{}, "static", static); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		var got []uint32
		for i := range 7 {
			got = append(got, le.Uint32(b[0x200+4*i:]))
		}
		want := []uint32{vdiwUnallocated, 0, vdiwUnallocated, vdiwUnallocated, 1, vdiwUnallocated, 2}
		size := int64(1<<20 + 3<<20)
		if static == "on" {
			want = []uint32{0, 1, 2, 3, 4, 5, 6}
			size = 1<<20 + 7<<20
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || !isZero(b[0x200+4*7:1<<20]) || int64(len(b)) != size {
			t.Errorf("static=%s: block map %x, file %d bytes (want %x, %d)", static, got, len(b), want, size)
		}
		if string(b[:0x40]) != vdiwText+string(make([]byte, 0x40-len(vdiwText))) || le.Uint32(b[0x40:]) != vdiwSignature {
			t.Errorf("pre-header %q", b[:0x44])
		}
		again := out + ".again"
		if err := vxConvert(inspect.VDI, img, again, Options{Workers: 3, ChunkSize: 64 << 10}, "static", static); err != nil {
			t.Fatal(err)
		}
		if a, _ := os.ReadFile(again); !bytes.Equal(a, b) {
			t.Errorf("static=%s: two conversions with the same options differ", static)
		}
	}
}

// TestVDIWriterOptionErrors: refused options and outputs, with messages that say why.
func TestVDIWriterOptionErrors(t *testing.T) {
	vxOptionErrors(t, inspect.VDI, []vxOptErr{
		{"unknown key", map[string]string{"subformat": "dynamic"}, false, "subformat"},
		{"static", map[string]string{"static": "2"}, false, "on or off"},
		{"size", map[string]string{"size": "1G"}, false, "source's"},
		{"uuid", map[string]string{"uuid": "0123"}, false, "UUID"},
		{"null uuid", map[string]string{"uuid": "00000000-0000-0000-0000-000000000000"}, false, "null UUID"},
		{"-c", nil, true, "compressed"},
	})
	vxSizeLimit(t, inspect.VDI, int64(vdiwMaxBlocks)<<20+512, "more than a vdi holds")
}

// TestVDIWriterFailures: see vxFailures.
func TestVDIWriterFailures(t *testing.T) {
	vxFailures(t, inspect.VDI, [][]string{{"static", "off"}, {"static", "on"}})
}

func TestVDIWriterContract(t *testing.T) {
	vxContract(t, inspect.VDI, nil, true)
	vxContract(t, inspect.VDI, []string{"static", "on"}, false)
}

func FuzzVDIWriterOptions(f *testing.F) {
	vxFuzzOptions(f, inspect.VDI, []string{"", "static=on", "static=off,uuid=01234567-89ab-cdef-0123-456789abcdef", "static=yes"})
}

func BenchmarkWriteVDI(b *testing.B) {
	vxBench(b, inspect.VDI, [][]string{{"static", "off"}, {"static", "on"}})
}
