package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// isoTree writes a small directory tree to put on an ISO, with a 8 KiB boot image and a
// 32 KiB EFI image.
func isoTree(t testing.TB, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "tree")
	for name, size := range map[string]int{"README.TXT": 100, "boot/boot.img": 8 << 10, "boot/efi.img": 32 << 10, "data/big.bin": 100 << 10} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := bytes.Repeat([]byte(name), size/len(name)+1)[:size]
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return src
}

// isoFixtures builds ISOs with genisoimage and xorriso (plain, Joliet, Rock Ridge, El
// Torito, UDF, hybrid MBR and GPT layouts), a UDF-only image by hand, a truncated one, and
// lists the third-party ISO samples.
func isoFixtures(t testing.TB, dir string) []fixture {
	qemutest.Need(t, "genisoimage", "xorriso")
	src := isoTree(t, dir)
	var out []fixture
	add := func(name, path string, findings ...string) {
		out = append(out, fixture{name: name, path: path, qemuFormat: "raw", format: ISO, findings: findings, readable: true})
	}
	geniso := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		qemutest.Run(t, "genisoimage", append(append([]string{"-quiet", "-V", "GLIMPSE", "-o", p}, args...), src)...)
		return p
	}
	xorriso := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		qemutest.Run(t, "xorriso", append(append([]string{"-as", "mkisofs", "-quiet", "-V", "GLIMPSE", "-o", p}, args...), src)...)
		return p
	}
	add("iso-genisoimage", geniso("plain.iso"))
	add("iso-joliet", geniso("joliet.iso", "-J"))
	add("iso-rock-ridge", geniso("rr.iso", "-R"))
	add("iso-el-torito", geniso("boot.iso", "-b", "boot/boot.img", "-c", "boot/boot.cat", "-no-emul-boot", "-boot-load-size", "4"))
	add("iso-udf-bridge", geniso("udf.iso", "-udf", "-J"))
	add("iso-xorriso", xorriso("x.iso", "-R", "-J"))
	// isohybrid layouts: an MBR whose partition starts at LBA 0 and covers the ISO, next
	// to El Torito; a GPT beside a hybrid MBR; a protective msdos label; a partition offset.
	mbr := filepath.Join(dir, "isohdpfx.bin")
	if err := os.WriteFile(mbr, make([]byte, 432), 0o644); err != nil {
		t.Fatal(err)
	}
	add("iso-isohybrid-mbr", xorriso("hybrid.iso", "-isohybrid-mbr", mbr, "-b", "boot/boot.img", "-no-emul-boot", "-boot-load-size", "4"))
	add("iso-isohybrid-gpt", xorriso("hybrid-gpt.iso", "-isohybrid-mbr", mbr, "-b", "boot/boot.img", "-no-emul-boot", "-boot-load-size", "4",
		"-eltorito-alt-boot", "-e", "boot/efi.img", "-no-emul-boot", "-isohybrid-gpt-basdat"))
	add("iso-protective-msdos-label", xorriso("prot.iso", "--protective-msdos-label"))
	add("iso-partition-offset", xorriso("poff.iso", "-partition_offset", "16"))
	add("iso-appended-efi-partition", xorriso("efi.iso", "-e", "boot/efi.img", "-no-emul-boot", "-append_partition", "2", "0xef",
		filepath.Join(src, "boot/efi.img")))

	udf := filepath.Join(dir, "udf-only.iso")
	if err := os.WriteFile(udf, isoUDFOnly(), 0o644); err != nil {
		t.Fatal(err)
	}
	add("iso-udf-only", udf)

	short := ptCopy(t, filepath.Join(dir, "plain.iso"), filepath.Join(dir, "short.iso"))
	if err := os.Truncate(short, 40<<10); err != nil {
		t.Fatal(err)
	}
	add("iso-truncated", short, FindPastEOF)

	if qemutest.SharedDirOrEmpty() != "" {
		for _, s := range []string{"iso9660/test.iso", "iso9660/test_rockridge.iso", "cot/input.iso"} {
			add("iso-sample-"+filepath.Base(s), qemutest.ThirdParty(t, s))
		}
	}
	return out
}

// isoUDFOnly is a UDF volume recognition sequence with no ISO 9660 descriptor (as
// UDF-only authoring tools write it), on a 64 KiB image.
func isoUDFOnly() []byte {
	b := make([]byte, 64<<10)
	for i, id := range []string{"BEA01", "NSR03", "TEA01"} {
		d := b[(16+i)*isoSectorSize:]
		d[0], d[6] = 0, 1
		copy(d[1:], id)
	}
	return b
}

func TestISOFixtures(t *testing.T) {
	fxs := isoFixtures(t, t.TempDir())
	ptRunFixtures(t, fxs)
	get := func(name string) ISOInfo {
		t.Helper()
		for _, fx := range fxs {
			if fx.name == name {
				img := openT(t, fx.path, OpenOptions{})
				return img.Info().FormatSpecific.Data.(ISOInfo)
			}
		}
		t.Fatalf("no fixture %s", name)
		return ISOInfo{}
	}
	t.Run("describe", func(t *testing.T) {
		plain := get("iso-genisoimage")
		if plain.VolumeID != "GLIMPSE" || plain.LogicalBlockSize != 2048 || plain.VolumeSetSize != 1 || plain.VolumeSequenceNumber != 1 ||
			plain.Joliet || plain.RockRidge || plain.ElTorito != nil || plain.UDF != "" || plain.PartitionTable != nil ||
			!slices.Equal(plain.Descriptors, []string{"primary", "terminator"}) || plain.Created == "" || plain.RootDirectory == nil {
			t.Errorf("plain %+v", plain)
		}
		if st, err := os.Stat(fxsPath(fxs, "iso-genisoimage")); err != nil || st.Size() != plain.VolumeSize {
			t.Errorf("volume size %d, file %d", plain.VolumeSize, st.Size())
		}
		if j := get("iso-joliet"); !j.Joliet || j.JolietLevel != 3 || !slices.Equal(j.Descriptors, []string{"primary", "supplementary", "terminator"}) {
			t.Errorf("joliet %+v", j)
		}
		if r := get("iso-rock-ridge"); !r.RockRidge || r.Joliet {
			t.Errorf("rock ridge %+v", r)
		}
		b := get("iso-el-torito")
		if et := b.ElTorito; et == nil || !et.CatalogValid || et.Platform != "x86" || len(et.Entries) != 1 ||
			!et.Entries[0].Bootable || et.Entries[0].Media != "no emulation" || et.Entries[0].SectorCount != 4 {
			t.Errorf("el torito %+v %+v", b, b.ElTorito)
		}
		if u := get("iso-udf-bridge"); u.UDF != "NSR02" || !slices.Contains(u.Descriptors, "BEA01") || !slices.Contains(u.Descriptors, "TEA01") {
			t.Errorf("udf bridge %+v", u)
		}
		if u := get("iso-udf-only"); u.UDF != "NSR03" || u.VolumeID != "" || !slices.Equal(u.Descriptors, []string{"BEA01", "NSR03", "TEA01"}) {
			t.Errorf("udf only %+v", u)
		}
		if h := get("iso-isohybrid-mbr"); h.PartitionTable == nil || h.PartitionTable.Type != "mbr" || h.PartitionTable.Partitions[0].FirstLBA != 0 {
			t.Errorf("isohybrid %+v", h.PartitionTable)
		}
		if h := get("iso-isohybrid-gpt"); h.PartitionTable == nil || h.PartitionTable.Type != "gpt" || !h.PartitionTable.GPT.HeaderCRCValid ||
			h.ElTorito == nil || len(h.ElTorito.Entries) != 2 || h.ElTorito.Entries[1].Platform != "EFI" {
			t.Errorf("isohybrid gpt %+v %+v", h.PartitionTable, h.ElTorito)
		}
		if x := get("iso-xorriso"); !x.RockRidge || !x.Joliet {
			t.Errorf("xorriso %+v", x)
		}
	})
	t.Run("samples", func(t *testing.T) {
		if qemutest.SharedDirOrEmpty() == "" {
			t.Skip("no third-party samples")
		}
		s := get("iso-sample-test.iso")
		if s.VolumeID != "my-vol-id" || s.PublisherID != "gopher" || s.VolumeSetID != "test-volset-id" || s.RockRidge ||
			!slices.Equal(s.Descriptors, []string{"primary", "terminator"}) {
			t.Errorf("test.iso %+v", s)
		}
		if r := get("iso-sample-test_rockridge.iso"); !r.RockRidge {
			t.Errorf("test_rockridge.iso %+v", r)
		}
		if c := get("iso-sample-input.iso"); c.VolumeID != "CDROM" || c.VolumeSpaceSize != 176 || c.VolumeSize != 360448 {
			t.Errorf("input.iso %+v", c)
		}
	})
}

func fxsPath(fxs []fixture, name string) string {
	for _, fx := range fxs {
		if fx.name == name {
			return fx.path
		}
	}
	return ""
}

// isoMinimal builds a one-volume ISO in memory: a primary descriptor (and any others
// given, in order) then a terminator, on size bytes.
func isoMinimal(size int, extra ...[]byte) []byte {
	b := make([]byte, size)
	pvd := b[16*isoSectorSize:]
	pvd[0], pvd[6] = 1, 1
	copy(pvd[1:], "CD001")
	copy(pvd[8:40], strings.Repeat(" ", 32))
	copy(pvd[40:72], "CRAFTED"+strings.Repeat(" ", 25))
	both32 := func(d []byte, v uint32) {
		binary.LittleEndian.PutUint32(d, v)
		binary.BigEndian.PutUint32(d[4:], v)
	}
	both16 := func(d []byte, v uint16) {
		binary.LittleEndian.PutUint16(d, v)
		binary.BigEndian.PutUint16(d[2:], v)
	}
	both32(pvd[80:], uint32(size/isoSectorSize))
	both16(pvd[120:], 1)
	both16(pvd[124:], 1)
	both16(pvd[128:], isoSectorSize)
	both32(pvd[132:], 10)
	pvd[156] = 34
	both32(pvd[156+2:], 20) // root directory at block 20
	both32(pvd[156+10:], isoSectorSize)
	pvd[156+25] = 2
	pvd[156+32] = 1
	copy(pvd[813:], "2024022912345600")
	pvd[829] = 8 // UTC+2
	pvd[881] = 1
	i := 17
	for _, d := range extra {
		copy(b[i*isoSectorSize:], d)
		i++
	}
	t := b[i*isoSectorSize:]
	t[0], t[6] = 255, 1
	copy(t[1:], "CD001")
	return b
}

// isoPlant writes data over the system area of an ISO file (the first 32 KiB).
func isoPlant(t *testing.T, iso string, data []byte, dst string) string {
	t.Helper()
	if len(data) > 16*isoSectorSize {
		t.Fatalf("%d bytes do not fit in the system area", len(data))
	}
	p := ptCopy(t, iso, dst)
	ptPatch(t, p, 0, data)
	return p
}

// TestISOPolyglot: an ISO whose system area holds another format's header matches both
// probes, and opening it either way reports FindPolyglot.
func TestISOPolyglot(t *testing.T) {
	qemutest.Need(t, "qemu-img", "genisoimage")
	dir := t.TempDir()
	iso := filepath.Join(dir, "base.iso")
	qemutest.Run(t, "genisoimage", "-quiet", "-o", iso, isoTree(t, dir))
	cases := []struct {
		format Format
		make   func() []byte // the other format's first bytes
	}{
		{VDI, func() []byte { return isoRead(t, qemutest.Create(t, dir, "p.vdi", "vdi", "1M")) }},
		{QED, func() []byte { return isoRead(t, qemutest.Create(t, dir, "p.qed", "qed", "1M"))[:4096] }},
		{QCOW2, func() []byte { return isoRead(t, qemutest.Create(t, dir, "p.qcow2", "qcow2", "1M"))[:4096] }},
		{VMDK, func() []byte { return isoRead(t, qemutest.Create(t, dir, "p.vmdk", "vmdk", "1M"))[:16<<10] }},
		{VHD, func() []byte { return isoRead(t, qemutest.Create(t, dir, "p.vhd", "vpc", "1M"))[:1536] }},
		{LUKS, func() []byte { return luks2Crafted(16 << 10)[:4096] }},
	}
	for _, tc := range cases {
		t.Run(string(tc.format), func(t *testing.T) {
			head := tc.make()
			// The other format's probe must know its own file first; until that format's
			// parser lands, there is nothing to be a polyglot with.
			if all, _ := ProbeAll(bytes.NewReader(head), int64(len(head))); !slices.Contains(all, tc.format) {
				t.Skipf("the %s probe does not recognise a %s header yet", tc.format, tc.format)
			}
			p := isoPlant(t, iso, head, filepath.Join(dir, "poly-"+string(tc.format)+".iso"))
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := f.Stat()
			all, err := ProbeAll(f, st.Size())
			f.Close()
			if err != nil || !slices.Contains(all, ISO) || !slices.Contains(all, tc.format) {
				t.Fatalf("probes %v %v, want %s and iso", all, err, tc.format)
			}
			img := openT(t, p, OpenOptions{Format: ISO})
			if !hasFinding(img.Safety(), FindPolyglot) || img.Info().Format != ISO {
				t.Errorf("as iso: %v", img.Safety())
			}
			if img, err := OpenFile(p, OpenOptions{}); err == nil {
				if !hasFinding(img.Safety(), FindPolyglot) {
					t.Errorf("probed as %s: %v", img.Info().Format, img.Safety())
				}
				img.Close()
			} else if !errors.Is(err, ErrInvalid) {
				t.Errorf("probed open: %v", err)
			}
		})
	}
}

func isoRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestISOProbeStrict: what looks a little like an ISO is not one.
func TestISOProbeStrict(t *testing.T) {
	probe := func(b []byte) bool {
		return probeISO(&probeData{head: b[:min(len(b), probeHead)], size: int64(len(b))})
	}
	good := isoMinimal(64 << 10)
	if !probe(good) {
		t.Fatal("minimal ISO not recognised")
	}
	cases := map[string]func(b []byte){
		"no-cd001":    func(b []byte) { copy(b[16*isoSectorSize+1:], "CD002") },
		"bad-version": func(b []byte) { b[16*isoSectorSize+6] = 2 },
		"size-endian": func(b []byte) { b[16*isoSectorSize+84] ^= 1 },
		"block-size": func(b []byte) {
			binary.LittleEndian.PutUint16(b[16*isoSectorSize+128:], 4096)
			binary.BigEndian.PutUint16(b[16*isoSectorSize+130:], 4096)
		},
		"block-size-endian":  func(b []byte) { b[16*isoSectorSize+131] ^= 1 },
		"root-record-length": func(b []byte) { b[16*isoSectorSize+156] = 33 },
		"zero-size":          func(b []byte) { clear(b[16*isoSectorSize+80 : 16*isoSectorSize+88]) },
		"terminator-first":   func(b []byte) { b[16*isoSectorSize] = 255 },
		"udf-without-nsr": func(b []byte) {
			clear(b[16*isoSectorSize:])
			copy(b[16*isoSectorSize:], "\x00BEA01\x01")
			copy(b[17*isoSectorSize:], "\x00TEA01\x01")
		},
		"truncated": func(b []byte) {},
	}
	for name, patch := range cases {
		b := bytes.Clone(good)
		patch(b)
		if name == "truncated" {
			b = b[:17*isoSectorSize-1]
		}
		if probe(b) {
			t.Errorf("%s: probed as ISO", name)
		}
	}
	// Random-looking disks never match, whatever sector 16 holds.
	for seed := range 2000 {
		b := make([]byte, 40<<10)
		for i := 16 * isoSectorSize; i < len(b); i++ {
			b[i] = byte((i*131 + seed*7919) >> 3)
		}
		copy(b[16*isoSectorSize:], "\x01CD001\x01\x00")
		if probe(b) {
			t.Fatalf("seed %d: probed as ISO", seed)
		}
	}
}

// TestISOCrafted covers descriptors tools rarely write, and hostile ones.
func TestISOCrafted(t *testing.T) {
	open := func(b []byte) (Image, error) {
		return Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "c.iso", Format: ISO})
	}
	img, err := open(isoMinimal(64 << 10))
	if err != nil {
		t.Fatal(err)
	}
	i := img.Info().FormatSpecific.Data.(ISOInfo)
	if i.VolumeID != "CRAFTED" || i.SystemID != "" || i.Created != "2024-02-29T12:34:56+02:00" || i.VolumeSize != 64<<10 || len(img.Safety()) != 0 {
		t.Errorf("crafted %+v %v", i, img.Safety())
	}
	validate(t, img)

	// A boot record whose catalog is past the end, a partition descriptor, an enhanced
	// descriptor, a second primary.
	boot := make([]byte, isoSectorSize)
	boot[0], boot[6] = 0, 1
	copy(boot[1:], "CD001")
	copy(boot[7:], "EL TORITO SPECIFICATION")
	binary.LittleEndian.PutUint32(boot[71:], 1<<30)
	part := bytes.Clone(boot)
	part[0] = 3
	enh := bytes.Clone(boot)
	enh[0], enh[6] = 2, 2
	b := isoMinimal(64<<10, boot, part, enh, isoMinimal(64 << 10)[16*isoSectorSize:17*isoSectorSize])
	img, err = open(b)
	if err != nil {
		t.Fatal(err)
	}
	i = img.Info().FormatSpecific.Data.(ISOInfo)
	if !slices.Equal(i.Descriptors, []string{"primary", "boot", "partition", "enhanced", "primary", "terminator"}) ||
		i.ElTorito == nil || i.ElTorito.CatalogValid || !hasFinding(img.Safety(), FindPastEOF) {
		t.Errorf("descriptors %+v %v", i, img.Safety())
	}

	// A catalog with a bad checksum is described as invalid; one with sections lists them.
	binary.LittleEndian.PutUint32(b[17*isoSectorSize+71:], 25)
	cat := b[25*isoSectorSize:]
	cat[0], cat[1], cat[30], cat[31] = 1, 0, 0x55, 0xaa
	copy(cat[4:], "glimpse")
	var sum uint16
	for k := 0; k < 32; k += 2 {
		sum += binary.LittleEndian.Uint16(cat[k:])
	}
	binary.LittleEndian.PutUint16(cat[28:], -sum)
	cat[32], cat[33] = 0x88, 2 // bootable 1.44M floppy
	binary.LittleEndian.PutUint16(cat[38:], 1)
	binary.LittleEndian.PutUint32(cat[40:], 30)
	cat[64], cat[65] = 0x91, 0xef
	binary.LittleEndian.PutUint16(cat[66:], 300) // more entries than the sector holds
	for k := 96; k < isoSectorSize; k += 32 {
		cat[k] = 0x00
		binary.LittleEndian.PutUint32(cat[k+8:], uint32(k))
	}
	cat[128] = 0x44 // an extension entry
	img, err = open(b)
	if err != nil {
		t.Fatal(err)
	}
	et := img.Info().FormatSpecific.Data.(ISOInfo).ElTorito
	if et == nil || !et.CatalogValid || et.ID != "glimpse" || len(et.Entries) != 61 ||
		et.Entries[0].Media != "1.44M floppy" || et.Entries[1].Platform != "EFI" || et.Entries[1].Bootable {
		t.Errorf("catalog %+v", et)
	}
	cat[28] ^= 1
	img, _ = open(b)
	if et := img.Info().FormatSpecific.Data.(ISOInfo).ElTorito; et.CatalogValid || len(et.Entries) != 0 {
		t.Errorf("bad checksum: %+v", et)
	}

	// Hostile: no primary descriptor; a primary whose fields disagree; descriptors that
	// never end (the walk stops after isoMaxDescriptors).
	nopvd := isoMinimal(64 << 10)
	nopvd[16*isoSectorSize] = 2
	if _, err := open(nopvd); !errors.Is(err, ErrInvalid) {
		t.Errorf("no primary: %v", err)
	}
	bad := isoMinimal(64 << 10)
	bad[16*isoSectorSize+84] ^= 1
	if _, err := open(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("primary broken: %v", err)
	}
	endless := make([]byte, 200*isoSectorSize)
	copy(endless, isoMinimal(64 << 10)[:17*isoSectorSize])
	for k := 17; k < 200; k++ {
		copy(endless[k*isoSectorSize:], "\x00CD001\x01")
	}
	img, err = open(endless)
	if err != nil || len(img.Info().FormatSpecific.Data.(ISOInfo).Descriptors) != isoMaxDescriptors {
		t.Errorf("endless: %v", err)
	}
	if _, err := open(make([]byte, 64<<10)); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("zeros: %v", err)
	}
	// Rock Ridge records that lie: entry lengths past the record, no SP.
	rr := isoMinimal(64 << 10)
	rec := rr[20*isoSectorSize:]
	rec[0], rec[32] = 100, 1
	copy(rec[34:], "SP\x07\x01\xbe\xef\x00ER\xff\x01")
	img, err = open(rr)
	if err != nil || img.Info().FormatSpecific.Data.(ISOInfo).RockRidge {
		t.Errorf("lying SUSP: %v", err)
	}
	copy(rec[34:], "SP\x07\x01\xbe\xef\x00ER\x12\x01\x0a\x00\x00\x01RRIP_1991A")
	img, err = open(rr)
	if err != nil || !img.Info().FormatSpecific.Data.(ISOInfo).RockRidge {
		t.Errorf("ER RRIP: %v", err)
	}
}

func FuzzISO(f *testing.F) {
	f.Add(isoMinimal(40 << 10))
	f.Add(isoUDFOnly()[:40<<10])
	if _, err := exec.LookPath("xorriso"); (err == nil || qemutest.InCI()) && !ptFuzzWorker() {
		if _, err := exec.LookPath("genisoimage"); err == nil || qemutest.InCI() {
			for _, fx := range isoFixtures(f, f.TempDir()) {
				fuzzSeeds(f, fx.path)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, ISO)
	})
}
