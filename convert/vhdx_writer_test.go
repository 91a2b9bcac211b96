package convert

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// TestVHDXWriterMatrix converts every readable source format to a dynamic vhdx with 32 MiB
// blocks (and the raw and qcow2 sources with 1 MiB blocks and to a fixed one too); the
// disk, 8 MiB + 65 KiB + 1536 bytes, is not a multiple of either block size.
func TestVHDXWriterMatrix(t *testing.T) {
	vxMatrix(t, inspect.VHDX, [][]string{nil, {"block_size", "1M"}, {"subformat", "fixed"}},
		func(n int64, _ []string) (int64, error) { return n, nil })
}

// vhdxInfoCheck checks glimpse's vhdx detail: the block size, sector sizes, chunk ratio,
// disk id, the headers (the second current, no log) and the fixed flag.
func vhdxInfoCheck(block, logical int64, fixed bool) func(any) error {
	return func(d any) error {
		vi, ok := d.(inspect.VHDXInfo)
		if !ok {
			return fmt.Errorf("detail %T", d)
		}
		switch {
		case vi.BlockSize != block || int64(vi.LogicalSectorSize) != logical || vi.PhysicalSectorSize != 4096 ||
			vi.ChunkRatio != (1<<23)*logical/block || vi.LeaveBlocksAllocated != fixed || vi.HasParent:
			return fmt.Errorf("block %d, sectors %d/%d, chunk ratio %d, fixed %v, parent %v", vi.BlockSize, vi.LogicalSectorSize,
				vi.PhysicalSectorSize, vi.ChunkRatio, vi.LeaveBlocksAllocated, vi.HasParent)
		case vi.DiskID != vxFixedUUID || vi.Creator != "glimpse":
			return fmt.Errorf("disk id %s, creator %q", vi.DiskID, vi.Creator)
		case vi.CurrentHeader != 2 || vi.HeaderSequences != [2]uint64{1, 2} || vi.LogPresent || vi.LogNeedsReplay ||
			vi.LogGUID != "00000000-0000-0000-0000-000000000000" || vi.LogOffset != 1<<20 || vi.LogLength%(1<<20) != 0:
			return fmt.Errorf("headers %+v", vi)
		case vi.FileWriteGUID == vi.DiskID || vi.DataWriteGUID == vi.DiskID || vi.FileWriteGUID == vi.DataWriteGUID:
			return fmt.Errorf("GUIDs %s %s %s", vi.DiskID, vi.FileWriteGUID, vi.DataWriteGUID)
		case vi.MetadataOffset != vi.LogOffset+vi.LogLength || vi.BATOffset != vi.MetadataOffset+1<<20 || vi.BATLength%(1<<20) != 0:
			return fmt.Errorf("regions: metadata at %d, BAT at %d (%d bytes)", vi.MetadataOffset, vi.BATOffset, vi.BATLength)
		}
		return nil
	}
}

// TestVHDXWriterSizes: 1 MiB and 32 MiB blocks (and 256 MiB, and qemu's choice) on disks
// that are not a multiple of the block size, data at block boundaries and on both sides of
// the first sector bitmap entry of the BAT (4 GiB with 512-byte sectors, whatever the block
// size), dynamic and fixed, an empty disk, a 0-byte disk, -S 0, log_size, and 4096-byte
// logical sectors (glimpse only: qemu 7.2 cannot open them).
func TestVHDXWriterSizes(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	type vcase struct {
		name        string
		size        int64
		at          []int64
		kv          []string
		opt         Options
		block       int64
		glimpseOnly bool
	}
	var cases []vcase
	for _, b := range []string{"1M", "32M"} {
		bs, _ := parseQemuSize(b)
		for _, sub := range []string{"dynamic", "fixed"} {
			kv := []string{"block_size", b, "subformat", sub}
			cases = append(cases,
				vcase{name: "partial-" + b + sub, size: bs + bs/2 + 1536, at: []int64{0, bs - 512, bs, bs + bs/2 + 1024}, kv: kv, block: bs},
				vcase{name: "empty-" + b + sub, size: bs/2 + 4096, kv: kv, block: bs},
				vcase{name: "sb-boundary-" + b + sub, size: 5<<30 + 3584, at: []int64{0, 4<<30 - 512, 4 << 30, 4<<30 + bs, 5<<30 + 3072}, kv: kv, block: bs},
			)
		}
	}
	cases = append(cases,
		vcase{name: "one-sector", size: 512, at: []int64{0}, block: 32 << 20},
		vcase{name: "odd-bytes", size: 1000, at: []int64{488}, block: 32 << 20},
		// qemu reads the 256 MiB (of holes) of BAT an empty disk with 32 MiB blocks has for
		// it at every open: glimpse only.
		vcase{name: "zero-bytes", size: 0, block: 32 << 20, glimpseOnly: true},
		vcase{name: "zero-bytes-1M", size: 0, kv: []string{"block_size", "1M"}, block: 1 << 20},
		vcase{name: "fully-allocated", size: 2<<20 + 512, at: []int64{4096}, opt: Options{FullyAllocated: true}, kv: []string{"block_size", "1M"}, block: 1 << 20},
		vcase{name: "256M", size: 300 << 20, at: []int64{256<<20 - 512, 256 << 20, 300<<20 - 512}, kv: []string{"block_size", "256M"}, block: 256 << 20},
		vcase{name: "qemu-choice", size: 20 << 20, at: []int64{8 << 20}, kv: []string{"block_size", "0"}, block: 8 << 20},
		vcase{name: "log-size", size: 4 << 20, at: []int64{1 << 20}, kv: []string{"log_size", "3M", "block_state_zero", "off"}, block: 32 << 20},
		vcase{name: "4kn", size: 9<<20 + 4096, at: []int64{0, 8<<20 - 512, 9 << 20}, kv: []string{"logical_sector_size", "4096", "block_size", "4M"}, block: 4 << 20},
		vcase{name: "4kn-odd", size: 5<<20 + 512, at: []int64{5 << 20}, kv: []string{"logical_sector_size", "4096", "subformat", "fixed", "block_size", "1M"}, block: 1 << 20},
	)
	var jobs []func() []error
	for _, c := range cases {
		p, img := vxRawSource(t, dir, c.name+".raw", c.size, c.at...)
		jobs = append(jobs, func() []error {
			out := filepath.Join(dir, c.name+".vhdx")
			if err := vxConvert(inspect.VHDX, img, out, c.opt, c.kv...); err != nil {
				return []error{err}
			}
			defer os.Remove(out)
			logical := int64(512)
			if vxHas(c.kv, "logical_sector_size", "4096") {
				logical = 4096
			}
			fixed := vxHas(c.kv, "subformat", "fixed")
			w := vxWant{format: inspect.VHDX, size: alignUp(c.size, logical), src: p, srcFormat: "raw", n: c.size,
				info: vhdxInfoCheck(c.block, logical, fixed), glimpseOnly: logical == 4096 || c.glimpseOnly}
			if c.size > 64<<20 {
				// qemu-img compare would read all of it: qemu-io and glimpse read the spots
				w.srcImg, w.spots = img, c.at
			} else {
				var err error
				if w.sha, _, err = vxFileSHA(p, -1); err != nil {
					return []error{err}
				}
			}
			errs := vxCheckOutput(out, w)
			// A dynamic file holds its metadata and the blocks with data; zeros are holes.
			var st syscall.Stat_t
			if err := syscall.Stat(out, &st); err != nil {
				return append(errs, err)
			}
			limit := int64(len(c.at))*8192 + 64<<10 + (c.size/c.block+1)*8
			if c.opt.FullyAllocated {
				limit += c.size
			}
			if st.Blocks*512 > limit {
				errs = append(errs, fmt.Errorf("%s: %d bytes on disk, want at most %d", c.name, st.Blocks*512, limit))
			}
			return errs
		})
	}
	vxParallel(t, jobs)
}

// vhdxBAT reads the BAT of a vhdx written by the writer (its place from the region table).
func vhdxBAT(t testing.TB, b []byte) []uint64 {
	t.Helper()
	le := binary.LittleEndian
	rt := b[192<<10 : 256<<10]
	if !bytes.Equal(rt, b[256<<10:320<<10]) || string(rt[:4]) != "regi" || le.Uint32(rt[8:]) != 2 {
		t.Fatalf("region tables %x", rt[:16])
	}
	sum := le.Uint32(rt[4:])
	c := bytes.Clone(rt)
	clear(c[4:8])
	if crc32.Checksum(c, crc32.MakeTable(crc32.Castagnoli)) != sum {
		t.Fatal("region table checksum")
	}
	if !bytes.Equal(rt[16:32], vhdxwBATRegion[:]) || le.Uint32(rt[44:]) != 1 || le.Uint32(rt[76:]) != 1 {
		t.Fatalf("region entries %x", rt[16:80])
	}
	off, n := le.Uint64(rt[32:]), le.Uint32(rt[40:])
	var out []uint64
	for i := uint64(0); i < uint64(n); i += 8 {
		out = append(out, le.Uint64(b[off+i:]))
	}
	return out
}

// TestVHDXWriterLayout reads the BAT back: blocks with data FULLY_PRESENT at 1 MiB
// boundaries in guest order after the BAT, blocks without ZERO (or NOT_PRESENT with
// block_state_zero=off), sector bitmap entries 0; a fixed disk maps every block in place.
// glimpse's extents show the states (ZERO: KindZero, NOT_PRESENT: KindHole).
func TestVHDXWriterLayout(t *testing.T) {
	dir := t.TempDir()
	_, img := vxRawSource(t, dir, "src.raw", 7<<20+512, 3<<20, 1<<20+4096, 7<<20)
	for _, c := range []struct {
		kv   []string
		want []uint64 // states of the 8 payload blocks
		kind inspect.Kind
	}{
		{[]string{"block_size", "1M"}, []uint64{2, 6, 2, 6, 2, 2, 2, 6}, inspect.KindZero},
		{[]string{"block_size", "1M", "block_state_zero", "off"}, []uint64{0, 6, 0, 6, 0, 0, 0, 6}, inspect.KindHole},
		{[]string{"block_size", "1M", "subformat", "fixed"}, []uint64{6, 6, 6, 6, 6, 6, 6, 6}, inspect.KindData},
	} {
		out := filepath.Join(dir, strings.Join(c.kv, "-")+".vhdx")
		if err := vxConvert(inspect.VHDX, img, out, Options{}, c.kv...); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		bat := vhdxBAT(t, b)
		fixed := vxHas(c.kv, "subformat", "fixed")
		var states []uint64
		var offs []int64
		for i, e := range bat {
			if i >= 8 {
				if e != 0 {
					t.Errorf("%v: entry %d past the disk is %x", c.kv, i, e)
				}
				continue
			}
			states = append(states, e&7)
			if e&7 == 6 {
				offs = append(offs, int64(e>>20)<<20)
			} else if e>>3 != 0 {
				t.Errorf("%v: entry %d has an offset in state %d", c.kv, i, e&7)
			}
		}
		if fmt.Sprint(states) != fmt.Sprint(c.want) {
			t.Errorf("%v: states %v, want %v", c.kv, states, c.want)
		}
		for k := 1; k < len(offs); k++ {
			if offs[k] != offs[k-1]+1<<20 {
				t.Errorf("%v: blocks at %v, not one after the other in guest order", c.kv, offs)
			}
		}
		if len(offs) > 0 && (offs[0] != 4<<20 || int64(len(b)) != offs[len(offs)-1]+1<<20) {
			t.Errorf("%v: first block at %d, file of %d bytes, last block at %d", c.kv, offs[0], len(b), offs[len(offs)-1])
		}
		if fixed {
			continue
		}
		o, err := inspect.OpenFile(out, inspect.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e, err := o.Extent(0, 1<<20)
		o.Close()
		if err != nil || e.Kind != c.kind || e.Length != 1<<20 {
			t.Errorf("%v: the first block's extent is %+v, %v; want kind %v", c.kv, e, err, c.kind)
		}
	}
}

// TestVHDXWriterOptionErrors: refused options and outputs, with messages that say why.
func TestVHDXWriterOptionErrors(t *testing.T) {
	vxOptionErrors(t, inspect.VHDX, []vxOptErr{
		{"unknown key", map[string]string{"cluster_size": "1M"}, false, "cluster_size"},
		{"subformat", map[string]string{"subformat": "differencing"}, false, "differencing"},
		{"subformat typo", map[string]string{"subformat": "Fixed"}, false, "dynamic or fixed"},
		{"block size small", map[string]string{"block_size": "512k"}, false, "1M to 256M"},
		{"block size large", map[string]string{"block_size": "512M"}, false, "1M to 256M"},
		{"block size odd", map[string]string{"block_size": "3M"}, false, "power of two"},
		{"log size", map[string]string{"log_size": "8G"}, false, "4095M"},
		{"log size text", map[string]string{"log_size": "big"}, false, "log size"},
		{"block_state_zero", map[string]string{"block_state_zero": "maybe"}, false, "on or off"},
		{"logical sector", map[string]string{"logical_sector_size": "1024"}, false, "512 or 4096"},
		{"size", map[string]string{"size": "1G"}, false, "source's"},
		{"uuid", map[string]string{"uuid": "x"}, false, "UUID"},
		{"-c", nil, true, "compressed"},
	})
	vxSizeLimit(t, inspect.VHDX, 64<<40+512, "64 TiB")
}

// TestVHDXWriterFailures: see vxFailures.
func TestVHDXWriterFailures(t *testing.T) {
	vxFailures(t, inspect.VHDX, [][]string{{"block_size", "1M"}, {"subformat", "fixed", "block_size", "1M"}})
}

func TestVHDXWriterContract(t *testing.T) {
	vxContract(t, inspect.VHDX, []string{"block_size", "1M"}, true)
	vxContract(t, inspect.VHDX, []string{"block_size", "1M", "subformat", "fixed"}, false)
}

func FuzzVHDXWriterOptions(f *testing.F) {
	vxFuzzOptions(f, inspect.VHDX, []string{"block_size=1M", "block_size=1M,subformat=fixed", "block_size=1M,block_state_zero=off",
		"block_size=1M,log_size=2M", "block_size=1M,logical_sector_size=4096", "block_size=1M,uuid=00000000-0000-0000-0000-000000000001"})
}

func BenchmarkWriteVHDX(b *testing.B) {
	vxBench(b, inspect.VHDX, [][]string{{"subformat", "dynamic"}, {"subformat", "fixed"}})
}
