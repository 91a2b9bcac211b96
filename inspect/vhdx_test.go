package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// vhdxFixtures builds the vhdx variants qemu-img writes (dynamic and fixed, block sizes,
// log sizes, with and without ZERO blocks, data in odd places) and the third-party samples
// of moderate size (the readable ones, the differencing disk and the dirty log).
func vhdxFixtures(t testing.TB, dir string) []fixture {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	var out []fixture
	odd := func(p string, size, block int64) {
		qemutest.IO(t, p, "vhdx",
			"write -P 0x11 0 512",
			fmt.Sprintf("write -P 0x22 %d 1024", block-512), // across the first block boundary
			fmt.Sprintf("write -P 0x33 %d 512", size-512),
			fmt.Sprintf("write -P 0x44 %d 4096", (size-4096)&^511),
			fmt.Sprintf("write -z %d 64k", block/2))
	}
	for _, v := range []struct {
		name, size string
		block      int64
		opts       []string
		data       bool
	}{
		{"dyn-10m", "10M", 8 << 20, nil, true},
		{"dyn-1m-blocks", "5243392", 1 << 20, []string{"block_size=1M", "log_size=2M"}, true}, // 5 MiB + 1536
		{"dyn-32m-blocks", "70M", 32 << 20, []string{"block_size=32M"}, true},
		{"dyn-no-zero-state", "6M", 2 << 20, []string{"block_size=2M", "block_state_zero=off"}, true},
		{"dyn-empty", "20M", 8 << 20, nil, false},
		{"fixed-10m", "10M", 8 << 20, []string{"subformat=fixed"}, true},
		{"fixed-present", "3M", 1 << 20, []string{"subformat=fixed", "block_state_zero=off", "block_size=1M"}, true},
	} {
		p := qemutest.Create(t, dir, v.name+".vhdx", "vhdx", v.size, v.opts...)
		if v.data {
			odd(p, qemutest.Info(t, p, "vhdx").VirtualSize, v.block)
		}
		out = append(out, fixture{name: "vhdx/" + v.name, path: p, format: VHDX, readable: true})
	}
	if qemutest.SharedDirOrEmpty() != "" {
		tp := func(rel string) string { return qemutest.ThirdParty(t, rel) }
		out = append(out,
			fixture{name: "vhdx/dissect-dynamic", path: tp("dissect.hypervisor/disk/vhdx/dynamic.vhdx.gz"), format: VHDX, readable: true},
			fixture{name: "vhdx/dissect-fixed", path: tp("dissect.hypervisor/disk/vhdx/fixed.vhdx.gz"), format: VHDX, readable: true},
			fixture{name: "vhdx/test-disk2vhd", path: tp("qemu-iotests/test-disk2vhd.vhdx.bz2"), format: VHDX, readable: true},
			// qemu refuses both: a differencing disk, and a log it would have to replay.
			fixture{name: "vhdx/dissect-differencing", path: tp("dissect.hypervisor/disk/vhdx/differencing.avhdx.gz"),
				qemuFormat: "-", format: VHDX, findings: []string{FindBackingFile}},
			fixture{name: "vhdx/dirtylog", path: tp("qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2"),
				qemuFormat: "-", format: VHDX, findings: []string{FindCorrupt}},
		)
	}
	return out
}

func TestVHDXFixtures(t *testing.T) {
	dir := t.TempDir()
	for _, fx := range vhdxFixtures(t, dir) {
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

// TestVHDXThirdParty: the samples give the verdicts and the guest bytes the MANIFEST records.
func TestVHDXThirdParty(t *testing.T) {
	qemutest.SharedDir(t)
	for _, v := range []struct {
		rel    string
		size   int64
		block  int64
		diskID string
		sha    string
	}{
		{"qemu-iotests/iotest-dynamic-1G.vhdx.bz2", 1 << 30, 32 << 20, "", "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478"},
		{"qemu-iotests/test-disk2vhd.vhdx.bz2", 256 << 20, 2 << 20, "", "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a"},
		{"dissect.hypervisor/disk/vhdx/dynamic.vhdx.gz", 10 << 20, 32 << 20, "788015f0-5e93-4bd2-a5de-b0cd8459db11", "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"},
		{"dissect.hypervisor/disk/vhdx/fixed.vhdx.gz", 10 << 20, 2 << 20, "4a49d245-db0a-4634-9818-9f93db5ba6c1", "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62"},
	} {
		t.Run(filepath.Base(v.rel), func(t *testing.T) {
			p := qemutest.ThirdParty(t, v.rel)
			img := openT(t, p, OpenOptions{})
			info := img.Info()
			if info.Format != VHDX || info.VirtualSize != v.size || info.ClusterSize != v.block || len(info.Safety) != 0 || info.DirtyFlag {
				t.Fatalf("info %+v", info)
			}
			vi := info.FormatSpecific.Data.(VHDXInfo)
			if v.diskID != "" && vi.DiskID != v.diskID {
				t.Errorf("disk id %s, want %s", vi.DiskID, v.diskID)
			}
			if rep := img.Check(); !rep.Clean() {
				t.Errorf("check: %+v", rep.Problems)
			}
			if got := guestSHA256(t, img); got != v.sha {
				t.Errorf("guest SHA-256 %s, MANIFEST says %s", got, v.sha)
			}
		})
	}
	t.Run("iotest-dynamic-1G patterns", func(t *testing.T) {
		// iotest 064: 0xa5 at 0-33 MiB, 0x96 at 33-66 MiB, zeros to 1 GiB.
		img := openT(t, qemutest.ThirdParty(t, "qemu-iotests/iotest-dynamic-1G.vhdx.bz2"), OpenOptions{})
		buf := make([]byte, 1<<20)
		for off := int64(0); off < img.Size(); off += int64(len(buf)) {
			if _, err := img.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
			want := byte(0)
			switch {
			case off < 33<<20:
				want = 0xa5
			case off < 66<<20:
				want = 0x96
			}
			for i, b := range buf {
				if b != want {
					t.Fatalf("byte %d is 0x%02x, want 0x%02x", off+int64(i), b, want)
				}
			}
			if off >= 66<<20 {
				off += 64 << 20 // sample the zeros
			}
		}
	})
	t.Run("test-disk2vhd headers", func(t *testing.T) {
		img := openT(t, qemutest.ThirdParty(t, "qemu-iotests/test-disk2vhd.vhdx.bz2"), OpenOptions{})
		vi := img.Info().FormatSpecific.Data.(VHDXInfo)
		if vi.HeaderSequences[0] != vi.HeaderSequences[1] || vi.CurrentHeader != 1 {
			t.Errorf("headers: %+v", vi)
		}
	})
	t.Run("dirtylog", func(t *testing.T) {
		p := qemutest.ThirdParty(t, "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2")
		if _, err := qemutest.Output("qemu-img", "info", p); err == nil || !strings.Contains(err.Error(), "contains a log that needs to be replayed") {
			t.Errorf("qemu-img info: %v", err)
		}
		img := openT(t, p, OpenOptions{})
		info := img.Info()
		if !info.DirtyFlag || info.VirtualSize != 10<<30 || info.ClusterSize != 1<<20 || !hasFinding(info.Safety, FindCorrupt) {
			t.Errorf("info %+v", info)
		}
		if vi := info.FormatSpecific.Data.(VHDXInfo); !vi.LogPresent || !vi.LogNeedsReplay {
			t.Errorf("log: %+v", vi)
		}
		_, err := img.ReadAt(make([]byte, 512), 0)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "log that needs to be replayed") {
			t.Errorf("read: %v", err)
		}
		if _, err := img.Extent(0, 0); !errors.Is(err, ErrUnsupported) {
			t.Errorf("extent: %v", err)
		}
		if rep := img.Check(); rep.Corruptions != 1 {
			t.Errorf("check: %+v (qemu-img check -r all repairs 1 corruption)", rep)
		}
	})
	t.Run("dirtylog replayed", func(t *testing.T) {
		// After qemu replays the log on a copy, the image is clean and reads as qemu reads it.
		qemutest.Need(t, "qemu-img")
		p := qemutest.CopyTo(t, qemutest.ThirdParty(t, "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2"), t.TempDir(), "replayed.vhdx")
		qemutest.Output("qemu-img", "check", "-r", "all", p)
		img := openT(t, p, OpenOptions{})
		if img.Info().DirtyFlag || len(img.Safety()) != 0 {
			t.Fatalf("after replay: %+v", img.Info())
		}
		buf := make([]byte, 18<<20)
		if _, err := img.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		for i, b := range buf {
			if b != 0xa5 {
				t.Fatalf("byte %d is 0x%02x after the replay, want 0xa5", i, b)
			}
		}
	})
	t.Run("differencing", func(t *testing.T) {
		p := qemutest.ThirdParty(t, "dissect.hypervisor/disk/vhdx/differencing.avhdx.gz")
		img := openT(t, p, OpenOptions{AllowBacking: true})
		info := img.Info()
		vi := info.FormatSpecific.Data.(VHDXInfo)
		if !vi.HasParent || vi.ParentLocatorType != "b04aefb7-d19e-4a81-b789-25b8e9445913" || len(vi.ParentLocator) != 5 ||
			info.BackingFilename != `.\Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx` || info.VirtualSize != 8<<30 {
			t.Errorf("info %+v %+v", info, vi)
		}
		if _, err := img.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrUnsupported) {
			t.Errorf("read: %v", err)
		}
		if rep := img.Check(); !rep.Clean() {
			t.Errorf("check: %+v", rep.Problems)
		}
	})
}

// TestVHDXChunkRatio: with 256 MiB blocks a sector bitmap entry follows every 16 payload
// entries; data after it must come from the right BAT entry. qemu-io reads the same bytes.
func TestVHDXChunkRatio(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := qemutest.Create(t, dir, "chunk.vhdx", "vhdx", "5G", "block_size=256M")
	const block = 256 << 20
	qemutest.IO(t, p, "vhdx", "write -P 0x61 "+fmt.Sprint(16*block-512)+" 1024", "write -P 0x62 "+fmt.Sprint(17*block+4096)+" 512")
	img := openT(t, p, OpenOptions{})
	if vi := img.Info().FormatSpecific.Data.(VHDXInfo); vi.ChunkRatio != 16 {
		t.Fatalf("chunk ratio %d", vi.ChunkRatio)
	}
	compareWithQemu(t, p, "", img.Info())
	for _, r := range []struct {
		off, n int64
		v      byte
	}{
		{16*block - 512, 1024, 0x61},
		{17*block + 4096, 512, 0x62},
		{17 * block, 4096, 0},
		{0, 4096, 0},
	} {
		buf := make([]byte, r.n)
		if _, err := img.ReadAt(buf, r.off); err != nil {
			t.Fatal(err)
		}
		for i, b := range buf {
			if b != r.v {
				t.Fatalf("byte %d is 0x%02x, want 0x%02x", r.off+int64(i), b, r.v)
			}
		}
		qemutest.IO(t, p, "vhdx", fmt.Sprintf("read -P 0x%02x %d %d", r.v, r.off, r.n))
	}
	// The map: the written bytes are data; blocks 0-14 and 18-19 (ZERO) are zeros without
	// a look at the file; the unwritten parts of blocks 15-17 are holes in the file.
	var data int64
	for pos := int64(0); pos < img.Size(); {
		e, err := img.Extent(pos, 0)
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == KindData {
			data += e.Length
			if e.Start < 15*block || e.End() > 18*block {
				t.Errorf("data extent %+v outside blocks 15-17", e)
			}
		} else if e.Kind != KindZero {
			t.Errorf("extent %+v", e)
		}
		pos = e.End()
	}
	if data < 1536 || data > 3*block {
		t.Errorf("%d bytes of data extents", data)
	}
	validate(t, img)
	if rep := img.Check(); !rep.Clean() {
		t.Errorf("check: %+v", rep.Problems)
	}
}

// TestVHDXLongRuns: FULLY_PRESENT blocks that follow each other in the file are one extent,
// and a read across them one segment.
func TestVHDXLongRuns(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	p := qemutest.Create(t, t.TempDir(), "runs.vhdx", "vhdx", "24M", "subformat=fixed", "block_state_zero=off", "block_size=1M")
	qemutest.IO(t, p, "vhdx", "write -P 0x3c 0 24M")
	img := openT(t, p, OpenOptions{})
	e, err := img.Extent(0, 0)
	if err != nil || e.Kind != KindData || e.Length != 24<<20 || e.Offset < vhdxHeaderSection {
		t.Errorf("Extent(0) = %+v, %v; want one 24 MiB data extent", e, err)
	}
	d := img.(*disk)
	if s, err := d.lookup(512); err != nil || s.length != 24<<20-512 {
		t.Errorf("lookup(512) = %+v, %v; want a run to the end", s, err)
	}
	compareGuestWithQemu(t, p, "", img)
}

// vhdxSetCRC recomputes the CRC-32C of a header or region table.
func vhdxSetCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[4:], vhdxChecksum(b))
}

// vhdxDynamicBytes is a qemu-made 10 MiB vhdx (8 MiB blocks): block 0 FULLY_PRESENT at
// 8 MiB, block 1 ZERO; log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB.
func vhdxDynamicBytes(t testing.TB, dir string) []byte {
	t.Helper()
	p := qemutest.Create(t, dir, "base.vhdx", "vhdx", "10M")
	qemutest.IO(t, p, "vhdx", "write -P 0x5a 0 64k")
	return vhdReadFile(t, p)
}

// TestVHDXHostile: crafted damage gives FormatErrors naming the field, findings, or check
// problems.
func TestVHDXHostile(t *testing.T) {
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := vhdxDynamicBytes(t, dir)
	const h1, h2, rt1, rt2, bat, meta = 64 << 10, 128 << 10, 192 << 10, 256 << 10, 2 << 20, 3 << 20
	le16 := binary.LittleEndian.PutUint16
	le32 := binary.LittleEndian.PutUint32
	le64 := binary.LittleEndian.PutUint64
	headers := func(b []byte, edit func(h []byte)) []byte {
		for _, off := range []int{h1, h2} {
			edit(b[off : off+vhdxHeaderSize])
			vhdxSetCRC(b[off : off+vhdxHeaderSize])
		}
		return b
	}
	regions := func(b []byte, edit func(r []byte)) []byte {
		for _, off := range []int{rt1, rt2} {
			edit(b[off : off+vhdxRegionSize])
			vhdxSetCRC(b[off : off+vhdxRegionSize])
		}
		return b
	}
	// The metadata items, as qemu lays them out: table entries at 32 + 32*i, items from
	// 64 KiB: file parameters, virtual size, page 83, logical, physical.
	item := func(b []byte, i int) []byte {
		off := binary.LittleEndian.Uint32(b[meta+32+32*i+16:])
		return b[meta+int(off):]
	}

	t.Run("errors", func(t *testing.T) {
		for _, v := range []struct {
			name, structure, field string
			mutate                 func(b []byte) []byte
			unsupported            bool
		}{
			{"headers-crc", "header", "", func(b []byte) []byte { b[h1+100]++; b[h2+100]++; return b }, false},
			{"headers-same-seq", "header", "sequence_number", func(b []byte) []byte {
				b[h2+16] ^= 1 // the file write GUIDs differ
				return headers(b, func(h []byte) { le64(h[8:], 7) })
			}, false},
			{"log-offset", "header", "log_offset", func(b []byte) []byte {
				return headers(b, func(h []byte) { le64(h[72:], 1<<20+4096) })
			}, false},
			{"log-version", "header", "log_version", func(b []byte) []byte {
				return headers(b, func(h []byte) { le16(h[64:], 1) })
			}, false},
			{"region-crc", "region table", "checksum", func(b []byte) []byte { b[rt1+100]++; return b }, false},
			{"region-count", "region table", "entry_count", func(b []byte) []byte {
				return regions(b, func(r []byte) { le32(r[8:], 100000) })
			}, false},
			{"region-overlaps-log", "region table", "file_offset", func(b []byte) []byte {
				return regions(b, func(r []byte) { le64(r[16+16:], 1<<20) })
			}, false},
			{"regions-overlap", "region table", "file_offset", func(b []byte) []byte {
				return regions(b, func(r []byte) { le64(r[48+16:], bat+4096) })
			}, false},
			{"no-metadata-region", "region table", "", func(b []byte) []byte {
				return regions(b, func(r []byte) { le32(r[8:], 1) })
			}, false},
			{"unknown-required-region", "region table", "guid", func(b []byte) []byte {
				return regions(b, func(r []byte) {
					le32(r[8:], 3)
					copy(r[80:], "glimpse-unknown!")
					le64(r[80+16:], 5<<20)
					le32(r[80+24:], 1<<20)
					le32(r[80+28:], 1)
				})
			}, true},
			{"metadata-signature", "metadata table", "signature", func(b []byte) []byte { b[meta] = 'M'; return b }, false},
			{"metadata-count", "metadata table", "entry_count", func(b []byte) []byte { le16(b[meta+10:], 5000); return b }, false},
			{"item-outside-region", "metadata table", "offset", func(b []byte) []byte { le32(b[meta+32+16:], 2<<20); return b }, false},
			{"item-inside-table", "metadata table", "offset", func(b []byte) []byte { le32(b[meta+32+16:], 512); return b }, false},
			{"item-too-short", "metadata table", "length", func(b []byte) []byte { le32(b[meta+32+20:], 4); return b }, false},
			{"unknown-required-item", "metadata table", "item_id", func(b []byte) []byte {
				copy(b[meta+32:], "glimpse-unknown!")
				return b
			}, true},
			{"no-file-parameters", "metadata table", "", func(b []byte) []byte {
				b[meta+32] ^= 0xff // an unknown item, not required
				le32(b[meta+32+24:], 0)
				return b
			}, false},
			{"block-size-0", "file parameters", "block_size", func(b []byte) []byte { le32(item(b, 0), 0); return b }, false},
			{"block-size-odd", "file parameters", "block_size", func(b []byte) []byte { le32(item(b, 0), 3<<20); return b }, false},
			{"block-size-huge", "file parameters", "block_size", func(b []byte) []byte { le32(item(b, 0), 512<<20); return b }, false},
			{"has-parent-no-locator", "file parameters", "has_parent", func(b []byte) []byte { le32(item(b, 0)[4:], 2); return b }, false},
			{"virtual-size-huge", "virtual disk size", "", func(b []byte) []byte { le64(item(b, 1), 1<<60); return b }, false},
			{"logical-sector", "logical sector size", "", func(b []byte) []byte { le32(item(b, 3), 1024); return b }, false},
			{"bat-too-small", "region table", "length", func(b []byte) []byte { le64(item(b, 1), 64<<40); return b }, false},
		} {
			t.Run(v.name, func(t *testing.T) {
				p := vhdWriteFile(t, filepath.Join(dir, v.name+".vhdx"), v.mutate(slices.Clone(base)))
				_, err := OpenFile(p, OpenOptions{})
				if v.unsupported && !errors.Is(err, ErrUnsupported) {
					t.Errorf("%v: want ErrUnsupported as well", err)
				}
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
			{"bat-past-eof", []string{FindPastEOF}, func(b []byte) []byte {
				return regions(b, func(r []byte) { le64(r[16+16:], 1<<30) })
			}},
			{"parent-locator", []string{FindBackingFile}, func(b []byte) []byte {
				// turn the page 83 item slot into a parent locator after the others
				le32(item(b, 0)[4:], 2)
				le16(b[meta+10:], 6)
				e := b[meta+32+32*5:]
				copy(e, vhdxParentLocGUID[:])
				le32(e[16:], 128<<10)
				le32(e[20:], 200)
				loc := b[meta+128<<10:]
				copy(loc, vhdxGUIDBytes("b04aefb7-d19e-4a81-b789-25b8e9445913"))
				le16(loc[18:], 1)
				le32(loc[20:], 32)
				le32(loc[24:], 32+26)
				le16(loc[28:], 26)
				le16(loc[30:], 18)
				copy(loc[32:], vhdUTF16LE("relative_path"))
				copy(loc[32+26:], vhdUTF16LE("parent.vh"))
				return b
			}},
		} {
			t.Run(v.name, func(t *testing.T) {
				p := vhdWriteFile(t, filepath.Join(dir, v.name+".vhdx"), v.mutate(slices.Clone(base)))
				img := openT(t, p, OpenOptions{})
				var codes []string
				for _, f := range img.Safety() {
					codes = append(codes, f.Code)
				}
				if !slices.Equal(codes, v.findings) {
					t.Errorf("findings %v, want %v", img.Safety(), v.findings)
				}
				buf := make([]byte, 1<<20)
				_, err := img.ReadAt(buf, 0)
				if err == nil {
					t.Errorf("read succeeded")
				}
				if v.name == "parent-locator" {
					if !errors.Is(err, ErrUnsupported) || img.Info().BackingFilename != "parent.vh" {
						t.Errorf("read %v, backing %q", err, img.Info().BackingFilename)
					}
				}
				img.Check()
			})
		}
	})

	t.Run("check", func(t *testing.T) {
		entry := func(b []byte, i int, state uint64, mb uint64) { le64(b[bat+8*i:], mb<<20|state) }
		for _, v := range []struct {
			name    string
			want    string
			mutate  func(b []byte) []byte
			readErr bool
		}{
			{"block-past-eof", "past the end of the file", func(b []byte) []byte { entry(b, 1, vhdxFullyPresent, 64); return b }, false},
			{"blocks-overlap", "overlaps payload block", func(b []byte) []byte { entry(b, 1, vhdxFullyPresent, 12); return b }, false},
			{"block-on-log", "overlaps the log", func(b []byte) []byte { entry(b, 1, vhdxFullyPresent, 1); return b }, false},
			{"block-in-header", "overlaps the header section", func(b []byte) []byte { entry(b, 1, vhdxFullyPresent, 0); return b }, true},
			{"partially-present", "PARTIALLY_PRESENT", func(b []byte) []byte { entry(b, 1, vhdxPartiallyPresent, 0); return b }, true},
			{"state-4", "unknown state", func(b []byte) []byte { entry(b, 1, 4, 0); return b }, true},
			{"header-2", "header 2 is not valid", func(b []byte) []byte { b[h2+200]++; return b }, false},
			{"region-table-2", "second region table", func(b []byte) []byte { b[rt2+200]++; return b }, false},
		} {
			t.Run(v.name, func(t *testing.T) {
				p := vhdWriteFile(t, filepath.Join(dir, "check-"+v.name+".vhdx"), v.mutate(slices.Clone(base)))
				img := openT(t, p, OpenOptions{})
				rep := img.Check()
				found := false
				for _, pr := range rep.Problems {
					found = found || pr.Kind == Corruption && strings.Contains(pr.Message, v.want)
				}
				if !found {
					t.Errorf("check: %+v; want a corruption about %q", rep.Problems, v.want)
				}
				_, err := img.ReadAt(make([]byte, 64<<10), 8<<20)
				if (err != nil) != v.readErr {
					t.Errorf("reading block 1: %v", err)
				}
				if !v.readErr {
					validate(t, img)
				}
			})
		}
	})
}

// vhdxGUIDBytes parses a GUID into Microsoft's on-disk layout.
func vhdxGUIDBytes(s string) []byte {
	var d1 uint32
	var d2, d3 uint16
	var d4 [8]byte
	fmt.Sscanf(s, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", &d1, &d2, &d3,
		&d4[0], &d4[1], &d4[2], &d4[3], &d4[4], &d4[5], &d4[6], &d4[7])
	g := vhdxMSGUID(d1, d2, d3, d4)
	return g[:]
}

func vhdUTF16LE(s string) []byte {
	var o []byte
	for _, r := range s {
		o = append(o, byte(r), byte(r>>8))
	}
	return o
}

// TestVHDXStream: the stream inspector agrees with the file inspector on every fixture.
func TestVHDXStream(t *testing.T) {
	dir := t.TempDir()
	for _, fx := range vhdxFixtures(t, dir) {
		data := vhdReadFile(t, fx.path)
		if len(data) > 40<<20 {
			continue
		}
		t.Run(fx.name, func(t *testing.T) {
			for _, opt := range []OpenOptions{{}, {Format: VHDX}} {
				if v := vhdStreamAgrees(t, fx.name, data, opt); v.Format != VHDX {
					t.Errorf("%+v: format %s", opt, v.Format)
				}
			}
		})
	}
}

func FuzzVHDX(f *testing.F) {
	// Compact crafted images (the qemu-made ones spread their metadata over 4 MiB, too much
	// for a fuzzer to mutate quickly): with and without data, and with a dirty log.
	f.Add(vhdxCompact(false))
	f.Add(vhdxCompact(true)[:1<<20+8<<10]) // block 0 cut by the end of the file
	f.Add(vhdxWithLog(vhdxCompact(false), 0, 2))
	thirdPartySeed(f, "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2", "qemu-iotests/test-disk2vhd.vhdx.bz2",
		"dissect.hypervisor/disk/vhdx/differencing.avhdx.gz")
	m, _ := filepath.Glob(filepath.Join("testdata", "vhdx", "*"))
	fuzzSeeds(f, m...)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, VHDX)
	})
}

// FuzzVHDXPatch fuzzes through the CRCs: its input is a list of patches applied to a compact
// image (header fields, region and metadata tables, BAT entries, the log), after which the
// headers', region tables' and log entry's CRC-32C are made right again (unless the input's
// flags say not to), so that mutations reach the parsing behind them.
func FuzzVHDXPatch(f *testing.F) {
	f.Add([]byte{0, 0})
	f.Add([]byte{1, 0})
	f.Add([]byte{2, 0})
	f.Add(append([]byte{1, 0}, vhdxPatch(vhdxCBAT, []byte{7})...))                  // PARTIALLY_PRESENT
	f.Add(append([]byte{1, 0}, vhdxPatch(vhdxCMeta+64<<10, []byte{0, 0, 0, 3})...)) // 48 MiB blocks
	f.Add(append([]byte{0, 0}, vhdxPatch(192<<10+8, []byte{200})...))               // region count
	f.Add(append([]byte{2, 0}, vhdxPatch(1<<20+8, []byte{0, 0x30})...))             // log entry length
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, vhdxFuzzImage(data), VHDX)
	})
}

// vhdxPatch encodes one patch for vhdxFuzzImage.
func vhdxPatch(off int, b []byte) []byte {
	return append([]byte{byte(off), byte(off >> 8), byte(off >> 16), byte(len(b))}, b...)
}

// vhdxFuzzImage builds the image FuzzVHDXPatch opens: data[0] picks the template (no data,
// data, data and a dirty log), data[1] holds flags (bit 0: keep the headers' CRCs, bit 1: the
// region tables', bit 2: the log entry's), and the rest is patches of a 3-byte offset, a
// length and bytes.
func vhdxFuzzImage(data []byte) []byte {
	if len(data) < 2 {
		return vhdxCompact(false)
	}
	var b []byte
	switch data[0] % 3 {
	case 0:
		b = vhdxCompact(false)
	case 1:
		b = vhdxCompact(true)
	default:
		b = vhdxWithLog(vhdxCompact(true), 0, 1)
	}
	flags := data[1]
	for p := data[2:]; len(p) >= 4; {
		off := (int(p[0]) | int(p[1])<<8 | int(p[2])<<16) % len(b)
		n := min(int(p[3])%64, len(p)-4)
		copy(b[off:], p[4:4+n])
		p = p[4+n:]
	}
	if flags&1 == 0 {
		for _, off := range vhdxHeaderOffsets {
			vhdxSetCRC(b[off : off+vhdxHeaderSize])
		}
	}
	if flags&2 == 0 {
		for _, off := range vhdxRegionOffsets {
			vhdxSetCRC(b[off : off+vhdxRegionSize])
		}
	}
	if flags&4 == 0 && len(b) >= 2<<20 && string(b[1<<20:1<<20+4]) == "loge" {
		e := b[1<<20:]
		n := int(binary.LittleEndian.Uint32(e[8:]))
		if n >= vhdxLogSector && n <= 1<<20 && n%vhdxLogSector == 0 {
			binary.LittleEndian.PutUint32(e[4:], 0)
			binary.LittleEndian.PutUint32(e[4:], crc32.Checksum(e[:n], vhdxCastagnoli))
		}
	}
	return b
}

// Layout of vhdxCompact: the header section up to 320 KiB, the BAT region at 320 KiB
// (64 KiB), the metadata region at 384 KiB (128 KiB), the log at 1 MiB (length 0: none),
// 1 MiB blocks, a 4 MiB disk.
const (
	vhdxCBAT  = 320 << 10
	vhdxCMeta = 384 << 10
)

// vhdxCompact builds a small valid vhdx by hand. With data, block 0 is FULLY_PRESENT at
// 1 MiB and starts with 8 KiB of pattern, block 1 is ZERO, block 2 NOT_PRESENT, block 3
// UNMAPPED; without, every block is NOT_PRESENT and the file ends after the metadata.
func vhdxCompact(data bool) []byte {
	size := vhdxCMeta + 128<<10
	if data {
		size = 2 << 20
	}
	b := make([]byte, size)
	le16 := binary.LittleEndian.PutUint16
	le32 := binary.LittleEndian.PutUint32
	le64 := binary.LittleEndian.PutUint64
	copy(b, "vhdxfile")
	copy(b[8:], vhdUTF16LE("glimpse test"))
	for i, off := range vhdxHeaderOffsets {
		h := b[off : off+vhdxHeaderSize]
		copy(h, "head")
		le64(h[8:], uint64(10+i))
		h[16], h[32] = 1, 2 // file and data write GUIDs
		le16(h[66:], 1)
		le64(h[72:], 1<<20)
		vhdxSetCRC(h)
	}
	for _, off := range vhdxRegionOffsets {
		r := b[off : off+vhdxRegionSize]
		copy(r, "regi")
		le32(r[8:], 2)
		copy(r[16:], vhdxBATGUID[:])
		le64(r[32:], vhdxCBAT)
		le32(r[40:], 64<<10)
		le32(r[44:], 1)
		copy(r[48:], vhdxMetadataGUID[:])
		le64(r[64:], vhdxCMeta)
		le32(r[72:], 128<<10)
		le32(r[76:], 1)
		vhdxSetCRC(r)
	}
	m := b[vhdxCMeta:]
	copy(m, "metadata")
	items := []struct {
		g    [16]byte
		n    int
		val  uint64
		flag uint32
	}{
		{vhdxFileParamsGUID, 8, 1 << 20, 4},
		{vhdxDiskSizeGUID, 8, 4 << 20, 6},
		{vhdxPage83GUID, 16, 0x1122334455667788, 6},
		{vhdxLogicalGUID, 4, 512, 6},
		{vhdxPhysicalGUID, 4, 4096, 6},
	}
	le16(m[10:], uint16(len(items)))
	at := 64 << 10
	for i, it := range items {
		e := m[32+32*i:]
		copy(e, it.g[:])
		le32(e[16:], uint32(at))
		le32(e[20:], uint32(it.n))
		le32(e[24:], it.flag)
		if it.n == 4 {
			le32(m[at:], uint32(it.val))
		} else {
			le64(m[at:], it.val)
		}
		at += it.n
	}
	if data {
		le64(b[vhdxCBAT:], 1<<20|vhdxFullyPresent)
		le64(b[vhdxCBAT+8:], vhdxZero)
		le64(b[vhdxCBAT+16:], vhdxNotPresent)
		le64(b[vhdxCBAT+24:], vhdxUnmapped)
		for i := 1 << 20; i < 1<<20+8<<10; i++ {
			b[i] = byte(i/512) | 1
		}
	}
	return b
}

// vhdxWithLog gives b a 1 MiB log at 1 MiB (beyond the end of a compact file: the rest reads
// as zeros) holding one valid entry at sector first: a header sector with one data
// descriptor, then extra data sectors (entry length (2+extra) sectors). The headers name
// the log.
func vhdxWithLog(b []byte, first, extra int) []byte {
	b = slices.Clone(b)
	const logOff, logLen = 1 << 20, 1 << 20
	guid := vhdxGUIDBytes("0badf00d-1234-5678-9abc-def012345678")
	le32 := binary.LittleEndian.PutUint32
	le64 := binary.LittleEndian.PutUint64
	for _, off := range vhdxHeaderOffsets {
		h := b[off : off+vhdxHeaderSize]
		copy(h[48:], guid)
		le32(h[68:], logLen)
		vhdxSetCRC(h)
	}
	n := 2 + extra
	entry := make([]byte, n*vhdxLogSector)
	copy(entry, "loge")
	le32(entry[8:], uint32(len(entry)))
	le64(entry[16:], 42)
	le32(entry[24:], 1)
	copy(entry[32:], guid)
	d := entry[64:]
	copy(d, "desc")
	le64(d[16:], vhdxCBAT)
	le64(d[24:], 42)
	data := entry[vhdxLogSector:]
	copy(data, "data")
	le32(data[4:], 0)
	le32(data[4092:], 42)
	for i := 2 * vhdxLogSector; i < len(entry); i++ {
		entry[i] = byte(i)
	}
	binary.LittleEndian.PutUint32(entry[4:], crc32.Checksum(entry, vhdxCastagnoli))
	// Place it in the circular log, growing the file to hold it.
	for k := range n {
		at := logOff + ((first+k)%(logLen/vhdxLogSector))*vhdxLogSector
		if len(b) < at+vhdxLogSector {
			b = append(b, make([]byte, at+vhdxLogSector-len(b))...)
		}
		copy(b[at:at+vhdxLogSector], entry[k*vhdxLogSector:])
	}
	return b
}

// TestVHDXCraftedLog: glimpse finds a valid log entry wherever it is, across the end of the
// circular log too, and ignores entries that are not valid.
func TestVHDXCraftedLog(t *testing.T) {
	open := func(t *testing.T, b []byte) Image {
		img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "crafted.vhdx"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		return img
	}
	clean := open(t, vhdxCompact(true))
	if len(clean.Safety()) != 0 || clean.Info().DirtyFlag {
		t.Fatalf("compact image: %+v", clean.Info())
	}
	validate(t, clean)
	rep := clean.Check()
	if rep.Corruptions != 0 || rep.AllocatedClusters != 1 || rep.TotalClusters != 4 {
		t.Errorf("check: %+v", rep)
	}
	const sectors = 256
	for _, v := range []struct {
		name  string
		first int
		edit  func(b []byte)
		dirty bool
	}{
		{"first-sector", 0, nil, true},
		{"middle", 100, nil, true},
		{"wrapping", sectors - 1, nil, true},
		{"crc", 7, func(b []byte) { b[1<<20+8*vhdxLogSector+3000] ^= 1 }, false},
		{"sequence-zero", 0, func(b []byte) { clear(b[1<<20+16 : 1<<20+24]) }, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			b := vhdxWithLog(vhdxCompact(true), v.first, 2)
			if v.edit != nil {
				v.edit(b)
			}
			img := open(t, b)
			info := img.Info()
			if info.DirtyFlag != v.dirty || hasFinding(info.Safety, FindCorrupt) != v.dirty {
				t.Fatalf("dirty %v, findings %v; want dirty %v", info.DirtyFlag, info.Safety, v.dirty)
			}
			_, err := img.ReadAt(make([]byte, 512), 0)
			if v.dirty != errors.Is(err, ErrUnsupported) {
				t.Errorf("read: %v", err)
			}
			// The stream inspector agrees.
			vhdStreamAgrees(t, "crafted-log-"+v.name, b, OpenOptions{})
		})
	}
	t.Run("bad-descriptor", func(t *testing.T) {
		// A sane entry header with a descriptor that is neither "zero" nor "desc": qemu's
		// log search fails and the open with it.
		b := vhdxWithLog(vhdxCompact(true), 3, 2)
		b[1<<20+3*vhdxLogSector+64] = 'x'
		_, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "crafted.vhdx"})
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Structure != "log" || fe.Field != "descriptor" {
			t.Errorf("open: %v, want a FormatError on the log descriptor", err)
		}
	})
}
