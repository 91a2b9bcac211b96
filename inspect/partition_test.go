package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf16"

	"glimpse/internal/qemutest"
)

// ptRunFixtures checks fixtures the way the cross-format tests will: each opens, reports
// its format and exactly its findings, keeps the Image invariants when readable, and agrees
// with qemu-img on the virtual size (and the format and guest bytes where qemu-img can open
// it as the same format).
func ptRunFixtures(t *testing.T, fxs []fixture) {
	t.Helper()
	for _, fx := range fxs {
		t.Run(fx.name, func(t *testing.T) {
			t.Parallel()
			img := openT(t, fx.path, OpenOptions{})
			info := img.Info()
			if info.Format != fx.format {
				t.Fatalf("format %s, want %s", info.Format, fx.format)
			}
			if got, want := ptCodes(img.Safety()), ptSortedCodes(fx.findings); !slices.Equal(got, want) {
				t.Errorf("findings %v, want %v: %v", got, want, img.Safety())
			}
			if fx.readable {
				validate(t, img)
			} else if img.Size() > 0 && ptReadsAll(img) {
				t.Errorf("every extent reads on an image marked unreadable")
			}
			switch {
			case fx.qemuFormat == "-":
			case fx.format == ISO:
				// qemu has no ISO driver: it reads an ISO as raw.
				if q := qemutest.Info(t, fx.path, fx.qemuFormat); q.VirtualSize != info.VirtualSize {
					t.Errorf("virtual size %d, qemu-img says %d", info.VirtualSize, q.VirtualSize)
				}
				compareGuestWithQemu(t, fx.path, fx.qemuFormat, img)
			default:
				compareWithQemu(t, fx.path, fx.qemuFormat, info)
				if fx.readable {
					compareGuestWithQemu(t, fx.path, fx.qemuFormat, img)
				}
			}
		})
	}
}

// ptReadsAll reports whether every extent of img can be read (its first byte).
func ptReadsAll(img Image) bool {
	one := make([]byte, 1)
	for pos, n := int64(0), 0; pos < img.Size() && n < 1<<16; n++ {
		e, err := img.Extent(pos, 0)
		if err != nil {
			return false
		}
		if _, err := img.ReadAt(one, pos); err != nil {
			return false
		}
		pos = e.End()
	}
	return true
}

func ptCodes(fs []Finding) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Code)
	}
	return ptSortedCodes(out)
}

func ptSortedCodes(codes []string) []string {
	out := slices.Clone(codes)
	if out == nil {
		out = []string{}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ptRunStdin runs a tool with its standard input (sfdisk reads its script there).
func ptRunStdin(t testing.TB, stdin, name string, args ...string) {
	t.Helper()
	qemutest.Need(t, name)
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// ptPatch overwrites bytes of a file.
func ptPatch(t testing.TB, path string, off int64, b []byte) {
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

func ptCopy(t testing.TB, src, dst string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// gptRefreshCRC recomputes the CRCs of the primary GPT (512-byte sectors) after a patch.
func gptRefreshCRC(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ptFixCRC(b, 512)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ptFixCRC recomputes the primary GPT's entry array CRC and header CRC in place.
func ptFixCRC(b []byte, ss int) {
	h := b[ss:]
	le := binary.LittleEndian
	arr := int(le.Uint64(h[72:])) * ss
	n := int(le.Uint32(h[80:])) * int(le.Uint32(h[84:]))
	le.PutUint32(h[88:], crc32.ChecksumIEEE(b[arr:arr+n]))
	le.PutUint32(h[16:], 0)
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:le.Uint32(h[12:])]))
}

// ptGUIDBytes encodes a GUID string the way GPT stores it.
func ptGUIDBytes(s string) []byte {
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		panic("bad GUID " + s)
	}
	out := slices.Clone(raw)
	out[0], out[1], out[2], out[3] = raw[3], raw[2], raw[1], raw[0]
	out[4], out[5] = raw[5], raw[4]
	out[6], out[7] = raw[7], raw[6]
	return out
}

type ptPart struct {
	typ         string
	first, last uint64
	name        string
}

const (
	gptLinuxFS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	gptESP     = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
)

// ptBuildGPT builds a disk of the given sectors with a protective MBR and a primary GPT of
// 128 entries (no backup, as on a disk grown after partitioning).
func ptBuildGPT(ss int, sectors uint64, parts []ptPart) []byte {
	b := make([]byte, int(sectors)*ss)
	le := binary.LittleEndian
	e := b[446:]
	copy(e, []byte{0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff})
	le.PutUint32(e[8:], 1)
	le.PutUint32(e[12:], uint32(min(sectors-1, 0xffffffff)))
	b[510], b[511] = 0x55, 0xaa
	arraySectors := uint64(128*128/ss + 0)
	h := b[ss:]
	copy(h, "EFI PART")
	le.PutUint32(h[8:], 0x00010000)
	le.PutUint32(h[12:], 92)
	le.PutUint64(h[24:], 1)
	le.PutUint64(h[32:], sectors-1)
	le.PutUint64(h[40:], 2+arraySectors)
	le.PutUint64(h[48:], sectors-1-arraySectors-1)
	copy(h[56:], ptGUIDBytes("11111111-2222-3333-4444-555555555555"))
	le.PutUint64(h[72:], 2)
	le.PutUint32(h[80:], 128)
	le.PutUint32(h[84:], 128)
	for i, p := range parts {
		ent := b[2*ss+128*i:]
		copy(ent, ptGUIDBytes(p.typ))
		copy(ent[16:], ptGUIDBytes("AAAAAAAA-BBBB-CCCC-DDDD-0000000000"+hex.EncodeToString([]byte{byte(i)})))
		le.PutUint64(ent[32:], p.first)
		le.PutUint64(ent[40:], p.last)
		for k, c := range utf16.Encode([]rune(p.name)) {
			le.PutUint16(ent[56+2*k:], c)
		}
	}
	ptFixCRC(b, ss)
	return b
}

// ptBuildMBR builds a disk with an MBR of the given entries (boot flag, type, first, count).
func ptBuildMBR(sectors int, entries ...[4]uint32) []byte {
	b := make([]byte, sectors*512)
	for i, e := range entries {
		p := b[446+16*i:]
		p[0], p[4] = byte(e[0]), byte(e[1])
		binary.LittleEndian.PutUint32(p[8:], e[2])
		binary.LittleEndian.PutUint32(p[12:], e[3])
	}
	b[510], b[511] = 0x55, 0xaa
	return b
}

// ptOpenBytes opens bytes as a raw disk and returns its partition table and findings.
func ptOpenBytes(t *testing.T, b []byte) (*PartitionTable, []Finding) {
	t.Helper()
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "disk.raw", Format: Raw})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var pt *PartitionTable
	if fs := img.Info().FormatSpecific; fs != nil {
		pt = fs.Data.(RawInfo).PartitionTable
	}
	return pt, img.Safety()
}

// rawFixtures builds raw disks with and without partition tables, good and bad.
func rawFixtures(t testing.TB, dir string) []fixture {
	qemutest.Need(t, "qemu-img", "sfdisk", "sgdisk")
	p := func(name string) string { return filepath.Join(dir, name) }
	var out []fixture
	add := func(name, path string, findings ...string) {
		out = append(out, fixture{name: name, path: path, qemuFormat: "raw", format: Raw, findings: findings, readable: true})
	}

	add("raw-blank", qemutest.Create(t, dir, "blank.raw", "raw", "4M"))

	mbr := qemutest.Create(t, dir, "mbr.raw", "raw", "8M")
	ptRunStdin(t, "label: dos\nstart=2048, size=4096, type=83, bootable\nstart=6144, type=82\n", "sfdisk", "-q", mbr)
	add("raw-mbr-sfdisk", mbr)

	gpt := qemutest.Create(t, dir, "gpt.raw", "raw", "8M")
	qemutest.Run(t, "sgdisk", "-n", "1:2048:+2M", "-t", "1:ef00", "-c", "1:EFI system", "-n", "2:0:0", "-t", "2:8300", gpt)
	add("raw-gpt-sgdisk", gpt)

	sfgpt := qemutest.Create(t, dir, "sfgpt.raw", "raw", "8M")
	ptRunStdin(t, "label: gpt\nstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=6144, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n", "sfdisk", "-q", sfgpt)
	add("raw-gpt-sfdisk", sfgpt)

	// A GPT disk grown after partitioning (qemu-img resize): the backup header is no
	// longer at the end, which is normal and not a finding.
	grown := ptCopy(t, gpt, p("grown.raw"))
	qemutest.Img(t, "resize", "-q", "-f", "raw", grown, "10M")
	add("raw-gpt-grown", grown)

	if qemutest.SharedDirOrEmpty() != "" {
		add("raw-grub-mbr", qemutest.ThirdParty(t, "qemu-iotests/grub_mbr.raw.bz2"))
	}

	fat := p("fat.raw")
	if err := os.WriteFile(fat, ptFATBootSector(1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	add("raw-fat-superfloppy", fat)

	// Bad MBRs.
	flag := ptCopy(t, mbr, p("bootflag.raw"))
	ptPatch(t, flag, 446+16, []byte{0x12})
	add("raw-mbr-boot-flag", flag, FindPartitionTable)

	overlap := ptCopy(t, mbr, p("mbr-overlap.raw"))
	ptPatch(t, overlap, 446+16+8, binary.LittleEndian.AppendUint32(nil, 5000))
	add("raw-mbr-overlap", overlap, FindPartitionTable)

	empty := qemutest.Create(t, dir, "empty-mbr.raw", "raw", "1M")
	ptPatch(t, empty, 510, []byte{0x55, 0xaa})
	add("raw-mbr-no-partition", empty, FindPartitionTable)

	// Bad protective MBRs and GPTs.
	hybrid := ptCopy(t, gpt, p("hybrid.raw"))
	qemutest.Run(t, "sgdisk", "-h", "2", hybrid)
	add("raw-gpt-hybrid-mbr", hybrid, FindPartitionTable)

	lba := ptCopy(t, gpt, p("pmbr-lba.raw"))
	ptPatch(t, lba, 446+8, binary.LittleEndian.AppendUint32(nil, 2))
	add("raw-pmbr-start-lba", lba, FindPartitionTable)

	nopmbr := ptCopy(t, gpt, p("no-pmbr.raw"))
	ptPatch(t, nopmbr, 446, make([]byte, 64))
	add("raw-gpt-no-protective-mbr", nopmbr, FindPartitionTable)

	hcrc := ptCopy(t, gpt, p("header-crc.raw"))
	ptPatch(t, hcrc, 512+56, []byte{0x42})
	add("raw-gpt-header-crc", hcrc, FindPartitionTable)

	ecrc := ptCopy(t, gpt, p("entries-crc.raw"))
	ptPatch(t, ecrc, 1024+56, []byte{'X'})
	add("raw-gpt-entries-crc", ecrc, FindPartitionTable)

	govl := ptCopy(t, gpt, p("gpt-overlap.raw"))
	ptPatch(t, govl, 1024+128+32, binary.LittleEndian.AppendUint64(nil, 3000))
	gptRefreshCRC(t, govl)
	add("raw-gpt-overlap", govl, FindPartitionTable)

	outside := ptCopy(t, gpt, p("gpt-outside.raw"))
	ptPatch(t, outside, 1024+32, binary.LittleEndian.AppendUint64(nil, 1))
	gptRefreshCRC(t, outside)
	add("raw-gpt-outside-usable", outside, FindPartitionTable)

	short := ptCopy(t, gpt, p("gpt-truncated.raw"))
	if err := os.Truncate(short, 4<<20); err != nil {
		t.Fatal(err)
	}
	add("raw-gpt-past-end", short, FindPartitionTable)
	return out
}

// ptFATBootSector is a FAT16 file system's boot sector written to a whole disk: it has the
// 0x55AA signature but no partition table.
func ptFATBootSector(size int) []byte {
	b := make([]byte, size)
	copy(b, []byte{0xeb, 0x3c, 0x90})
	copy(b[3:], "mkfs.fat")
	binary.LittleEndian.PutUint16(b[11:], 512) // bytes per sector
	b[13] = 4                                  // sectors per cluster
	binary.LittleEndian.PutUint16(b[14:], 4)   // reserved sectors
	b[16] = 2                                  // FATs
	b[21] = 0xf8                               // media descriptor
	copy(b[54:], "FAT16   ")
	// boot code where an MBR has its entries
	for i := 446; i < 510; i++ {
		b[i] = byte(i * 7)
	}
	b[510], b[511] = 0x55, 0xaa
	return b
}

func TestPartitionFixtures(t *testing.T) {
	fxs := rawFixtures(t, t.TempDir())
	t.Run("fixtures", func(t *testing.T) { ptRunFixtures(t, fxs) })
	get := func(name string) *PartitionTable {
		t.Helper()
		for _, fx := range fxs {
			if fx.name == name {
				img := openT(t, fx.path, OpenOptions{})
				fs := img.Info().FormatSpecific
				if fs == nil {
					return nil
				}
				return fs.Data.(RawInfo).PartitionTable
			}
		}
		t.Fatalf("no fixture %s", name)
		return nil
	}
	if pt := get("raw-blank"); pt != nil {
		t.Errorf("blank disk has a partition table: %+v", pt)
	}
	if pt := get("raw-fat-superfloppy"); pt != nil {
		t.Errorf("a FAT boot sector was read as an MBR: %+v", pt)
	}
	mbr := get("raw-mbr-sfdisk")
	if mbr == nil || mbr.Type != "mbr" || len(mbr.Partitions) != 2 {
		t.Fatalf("sfdisk MBR: %+v", mbr)
	}
	if p := mbr.Partitions[0]; p.Type != "0x83" || !p.Bootable || p.FirstLBA != 2048 || p.Start != 2048*512 || p.Length != 4096*512 {
		t.Errorf("sfdisk MBR partition 1: %+v", p)
	}
	if p := mbr.Partitions[1]; p.Type != "0x82" || p.Bootable || p.FirstLBA != 6144 || p.LastLBA != 16383 || p.TypeName != "Linux swap" {
		t.Errorf("sfdisk MBR partition 2: %+v", p)
	}
	gpt := get("raw-gpt-sgdisk")
	if gpt == nil || gpt.Type != "gpt" || gpt.GPT == nil || len(gpt.Partitions) != 2 || len(gpt.MBR) != 1 {
		t.Fatalf("sgdisk GPT: %+v", gpt)
	}
	g := gpt.GPT
	if !g.HeaderCRCValid || !g.EntriesCRCValid || g.MyLBA != 1 || g.AlternateLBA != 16383 || g.EntryCount != 128 || g.EntrySize != 128 || g.Revision != "1.0" {
		t.Errorf("sgdisk GPT header: %+v", g)
	}
	if p := gpt.Partitions[0]; p.TypeName != "EFI System" || p.Name != "EFI system" || p.FirstLBA != 2048 || p.LastLBA != 6143 {
		t.Errorf("sgdisk GPT partition 1: %+v", p)
	}
	if p := gpt.Partitions[1]; p.TypeName != "Linux filesystem" || p.Index != 2 || p.LastLBA != g.LastUsableLBA {
		t.Errorf("sgdisk GPT partition 2: %+v", p)
	}
	if m := gpt.MBR[0]; m.Type != "0xee" || m.FirstLBA != 1 {
		t.Errorf("protective MBR: %+v", m)
	}
	if sf := get("raw-gpt-sfdisk"); sf == nil || len(sf.Partitions) != 2 || sf.Partitions[1].Name != "root" {
		t.Errorf("sfdisk GPT: %+v", sf)
	}
	if grub := get("raw-grub-mbr"); grub != nil {
		if len(grub.Partitions) != 2 || !grub.Partitions[0].BeyondEnd || grub.Partitions[1].TypeName != "Linux LVM" {
			t.Errorf("GRUB MBR: %+v", grub)
		}
	}
}

// TestPartitionCrafted covers rules on tables built in memory, with the message that
// names the problem.
func TestPartitionCrafted(t *testing.T) {
	good := []ptPart{{gptESP, 40, 2047, "esp"}, {gptLinuxFS, 2048, 4000, "root"}}
	le := binary.LittleEndian
	cases := []struct {
		name string
		disk func() []byte
		want string // a fragment of the finding's message; "" for none
	}{
		{"gpt-good", func() []byte { return ptBuildGPT(512, 4096, good) }, ""},
		{"gpt-4k-sectors", func() []byte { return ptBuildGPT(4096, 1024, []ptPart{{gptLinuxFS, 10, 1000, "data"}}) }, ""},
		{"gpt-empty-table", func() []byte { return ptBuildGPT(512, 4096, nil) }, ""},
		{"gpt-my-lba", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			le.PutUint64(b[512+24:], 7)
			ptFixCRC(b, 512)
			return b
		}, "is at LBA 1"},
		{"gpt-header-size", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			le.PutUint32(b[512+12:], 600)
			return b
		}, "header size 600"},
		{"gpt-entry-size", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			le.PutUint32(b[512+84:], 100)
			ptFixCRC512Header(b)
			return b
		}, "entry size 100"},
		{"gpt-huge-array", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			le.PutUint32(b[512+80:], 0xffffffff)
			ptFixCRC512Header(b)
			return b
		}, "glimpse reads at most"},
		{"gpt-array-past-eof", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			le.PutUint64(b[512+72:], 1<<30)
			ptFixCRC512Header(b)
			return b
		}, "past the end of the file"},
		{"gpt-array-in-usable-area", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			copy(b[100*512:], b[1024:1024+128*128])
			le.PutUint64(b[512+72:], 100)
			ptFixCRC512Header(b)
			return b
		}, "inside the usable area"},
		{"gpt-reversed", func() []byte {
			return ptBuildGPT(512, 4096, []ptPart{{gptLinuxFS, 3000, 2000, "x"}})
		}, "before it starts"},
		{"gpt-nested", func() []byte {
			return ptBuildGPT(512, 4096, []ptPart{{gptLinuxFS, 100, 4000, "a"}, {gptESP, 200, 300, "b"}, {gptESP, 3000, 3100, "c"}})
		}, "overlap"},
		{"gpt-usable-reversed", func() []byte {
			b := ptBuildGPT(512, 4096, nil)
			le.PutUint64(b[512+40:], 5000)
			ptFixCRC(b, 512)
			return b
		}, "after the last usable"},
		{"gpt-no-signature", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			b[510] = 0
			return b
		}, "no 0x55AA signature"},
		{"pmbr-chs", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			b[446+2] = 0x01
			return b
		}, "start CHS"},
		{"pmbr-not-first", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			copy(b[446+32:446+48], b[446:462])
			clear(b[446:462])
			return b
		}, "must be the first"},
		{"pmbr-twice", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			copy(b[446+16:446+32], b[446:462])
			return b
		}, "exactly one"},
		{"pmbr-without-gpt", func() []byte {
			b := ptBuildGPT(512, 4096, good)
			clear(b[512:1024])
			return b
		}, "no GPT header"},
		{"mbr-good", func() []byte { return ptBuildMBR(100, [4]uint32{0x80, 0x83, 1, 50}, [4]uint32{0, 0x07, 51, 49}) }, ""},
		{"mbr-boot-flag", func() []byte { return ptBuildMBR(100, [4]uint32{0x81, 0x83, 1, 50}) }, "boot flag 0x81"},
		{"mbr-boot-flag-empty-slot", func() []byte { return ptBuildMBR(100, [4]uint32{0, 0x83, 1, 50}, [4]uint32{0x7f, 0, 0, 0}) }, "boot flag 0x7f"},
		{"mbr-overlap", func() []byte { return ptBuildMBR(100, [4]uint32{0, 0x83, 1, 50}, [4]uint32{0, 0x83, 50, 10}) }, "overlap"},
		{"mbr-extended", func() []byte { return ptBuildMBR(100, [4]uint32{0, 0x83, 1, 50}, [4]uint32{0, 0x05, 51, 40}) }, ""},
		{"mbr-past-end-is-fine", func() []byte { return ptBuildMBR(1, [4]uint32{0, 0x83, 2048, 1 << 20}) }, ""},
		{"mbr-no-partition", func() []byte { return ptBuildMBR(4) }, "defines no partition"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pt, fs := ptOpenBytes(t, tc.disk())
			if pt == nil {
				t.Fatal("no partition table")
			}
			if tc.want == "" {
				if len(fs) != 0 {
					t.Fatalf("findings %v", fs)
				}
				return
			}
			found := false
			for _, f := range fs {
				if f.Code != FindPartitionTable && f.Code != FindTooLarge {
					t.Errorf("unexpected finding %v", f)
				}
				found = found || strings.Contains(f.Message, tc.want)
			}
			if !found {
				t.Errorf("no finding says %q: %v", tc.want, fs)
			}
		})
	}
	// The 4 KiB-sector GPT is found at 4096, with its entries.
	pt, _ := ptOpenBytes(t, ptBuildGPT(4096, 1024, []ptPart{{gptLinuxFS, 10, 1000, "data"}}))
	if pt.SectorSize != 4096 || len(pt.Partitions) != 1 || pt.Partitions[0].Start != 10*4096 {
		t.Errorf("4K GPT: %+v", pt)
	}
	// An extended partition is described, not followed.
	pt, _ = ptOpenBytes(t, ptBuildMBR(100, [4]uint32{0, 0x83, 1, 50}, [4]uint32{0, 0x0f, 51, 40}))
	if len(pt.Partitions) != 2 || !pt.Partitions[1].Extended {
		t.Errorf("extended: %+v", pt)
	}
}

// ptFixCRC512Header recomputes only the header CRC (the entry array may be unreadable).
func ptFixCRC512Header(b []byte) {
	h := b[512:]
	le := binary.LittleEndian
	le.PutUint32(h[16:], 0)
	le.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
}

// TestPartitionStream: a GPT whose entry array lies beyond the probe head is read through
// the stream inspector's "not yet" errors, and both inspectors agree.
func TestPartitionStream(t *testing.T) {
	b := ptBuildGPT(512, 4096, []ptPart{{gptLinuxFS, 300, 4000, "x"}})
	copy(b[200*512:], b[1024:1024+128*128])
	clear(b[1024 : 1024+128*128])
	binary.LittleEndian.PutUint64(b[512+72:], 200)
	binary.LittleEndian.PutUint64(b[512+40:], 240)
	ptFixCRC(b, 512)
	pt, fs := ptOpenBytes(t, b)
	if len(fs) != 0 || len(pt.Partitions) != 1 {
		t.Fatalf("table %+v, findings %v", pt, fs)
	}
	v := checkStreamAgrees(t, "gpt.raw", b, OpenOptions{})
	if len(v.Findings) != 0 {
		t.Errorf("stream findings %v", v.Findings)
	}
	b[200*512+60] ^= 1 // breaks the entry CRC beyond the head
	if v := checkStreamAgrees(t, "gpt.raw", b, OpenOptions{}); !hasFinding(v.Findings, FindPartitionTable) {
		t.Errorf("stream missed the entry CRC: %v", v.Findings)
	}
}

// TestPartitionErrorsPassThrough: read errors other than a short file are not findings.
func TestPartitionErrorsPassThrough(t *testing.T) {
	b := ptBuildGPT(512, 4096, good2())
	binary.LittleEndian.PutUint64(b[512+72:], 1000)
	ptFixCRC512Header(b)
	boom := errors.New("disk on fire")
	r := &ptFailingReader{data: b, off: 1000 * 512, err: boom}
	_, err := Open(r, int64(len(b)), OpenOptions{Name: "x", Format: Raw})
	if !errors.Is(err, boom) {
		t.Fatalf("error %v, want the read error", err)
	}
}

func good2() []ptPart { return []ptPart{{gptLinuxFS, 2048, 4000, "root"}} }

// ptFailingReader fails the reads that start at off.
type ptFailingReader struct {
	data []byte
	off  int64
	err  error
}

func (r *ptFailingReader) ReadAt(p []byte, off int64) (int, error) {
	if off == r.off {
		return 0, r.err
	}
	return bytes.NewReader(r.data).ReadAt(p, off)
}

// ptFuzzWorker reports whether this process is a fuzzing worker: workers get their inputs
// from the coordinator, so building seed images there (seconds of qemu-img, xorriso,
// sgdisk per worker) only eats fuzzing time.
func ptFuzzWorker() bool {
	fl := flag.Lookup("test.fuzzworker")
	return fl != nil && fl.Value.String() == "true"
}

func FuzzPartitions(f *testing.F) {
	f.Add(ptBuildGPT(512, 200, []ptPart{{gptLinuxFS, 40, 150, "a"}, {gptESP, 100, 120, "b"}}))
	f.Add(ptBuildGPT(4096, 20, []ptPart{{gptLinuxFS, 6, 15, "a"}}))
	f.Add(ptBuildMBR(4, [4]uint32{0x80, 0x83, 1, 2}, [4]uint32{0, 0xee, 1, 100}))
	f.Add(ptFATBootSector(4096))
	if qemutest.SharedDirOrEmpty() != "" {
		thirdPartySeed(f, "qemu-iotests/grub_mbr.raw.bz2")
	}
	if _, err := exec.LookPath("sgdisk"); err == nil && !ptFuzzWorker() {
		// a table as sgdisk writes it, and the hybrid MBR it makes
		dir := f.TempDir()
		gpt := filepath.Join(dir, "gpt.raw")
		if err := os.WriteFile(gpt, make([]byte, 1<<20), 0o644); err != nil {
			f.Fatal(err)
		}
		qemutest.Run(f, "sgdisk", "-n", "1:40:+200K", "-t", "1:ef00", "-n", "2:0:0", "-c", "2:root", gpt)
		fuzzSeeds(f, gpt)
		qemutest.Run(f, "sgdisk", "-h", "1", gpt)
		fuzzSeeds(f, gpt)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, Raw)
	})
}
