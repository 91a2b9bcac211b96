package inspect

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"glimpse/internal/qemutest"
)

var (
	luksQemuOnce  sync.Once
	luksQemuBytes []byte
	luksQemuErr   error
)

// luksCreate writes a LUKS1 image made by qemu-img (4 MiB of payload). qemu-img spends
// seconds deriving keys whatever iter-time says, so the image is made once per test
// process and copied.
func luksCreate(t testing.TB, dir, name string) string {
	t.Helper()
	qemutest.Need(t, "qemu-img")
	luksQemuOnce.Do(func() {
		tmp, err := os.MkdirTemp("", "glimpse-luks-")
		if err != nil {
			luksQemuErr = err
			return
		}
		defer os.RemoveAll(tmp)
		p := filepath.Join(tmp, "q.luks")
		// qemu-img calibrates its key derivation on CPU time, and on a loaded machine it
		// fails now and then ("Unable to get accurate CPU usage"): try again before giving up.
		for try := 0; try < 5; try++ {
			os.Remove(p)
			_, luksQemuErr = qemutest.Output("qemu-img", "create", "-q", "--object", "secret,id=s0,data=pw", "-f", "luks",
				"-o", "key-secret=s0,iter-time=10", p, "4M")
			if luksQemuErr == nil {
				break
			}
		}
		if luksQemuErr != nil {
			return
		}
		luksQemuBytes, luksQemuErr = os.ReadFile(p)
	})
	if luksQemuErr != nil {
		t.Fatalf("qemu-img create -f luks: %v", luksQemuErr)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, luksQemuBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// luksCryptsetup makes a LUKS volume with cryptsetup luksFormat on a file of size bytes.
func luksCryptsetup(t testing.TB, dir, name, typ string, size int64, args ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	key := filepath.Join(dir, name+".key")
	if err := os.WriteFile(key, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	qemutest.Run(t, "cryptsetup", append([]string{"luksFormat", "-q", "--type", typ, "--pbkdf-force-iterations", "1000",
		"--key-file", key}, append(args, p)...)...)
	return p
}

// luksHaveCryptsetup: the cryptsetup variants are built where cryptsetup is installed, and
// always under CI (where its absence fails the test).
func luksHaveCryptsetup() bool {
	_, err := exec.LookPath("cryptsetup")
	return err == nil || qemutest.InCI()
}

// luksFixtures builds LUKS1 volumes with qemu-img (and cryptsetup), LUKS2 volumes with
// cryptsetup and by hand, and a LUKS1 header whose payload lies past the end of the file.
func luksFixtures(t testing.TB, dir string) []fixture {
	qemutest.Need(t, "qemu-img")
	add := func(name, path, qemuFormat string, findings ...string) fixture {
		return fixture{name: name, path: path, qemuFormat: qemuFormat, format: LUKS, findings: findings}
	}
	q := luksCreate(t, dir, "qemu.luks")
	odd := ptCopy(t, q, filepath.Join(dir, "odd.luks"))
	if err := os.Truncate(odd, 2068480+1000); err != nil { // qemu's payload offset, then 1000 bytes
		t.Fatal(err)
	}
	short := ptCopy(t, q, filepath.Join(dir, "short.luks"))
	if err := os.Truncate(short, 1<<20); err != nil {
		t.Fatal(err)
	}
	crafted := filepath.Join(dir, "crafted2.luks")
	if err := os.WriteFile(crafted, luks2Crafted(4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out := []fixture{
		add("luks1-qemu", q, "luks"),
		add("luks1-odd-size", odd, "luks"),
		add("luks1-payload-past-eof", short, "-", FindPastEOF),
		// qemu 7.2 reads LUKS2 as raw: only glimpse says what it is.
		add("luks2-crafted", crafted, "-", FindLUKSVersion),
	}
	if luksHaveCryptsetup() {
		out = append(out,
			add("luks1-cryptsetup", luksCryptsetup(t, dir, "cs1.luks", "luks1", 4<<20), "luks"),
			add("luks2-cryptsetup", luksCryptsetup(t, dir, "cs2.luks", "luks2", 4<<20, "--pbkdf", "pbkdf2",
				"--luks2-metadata-size", "16k", "--luks2-keyslots-size", "1m"), "-", FindLUKSVersion))
	}
	return out
}

// luks2Crafted builds a LUKS2 volume from the specification: the binary header with its
// SHA-256 checksum, the JSON area (16 KiB in all) and a payload at 1 MiB.
func luks2Crafted(size int) []byte {
	b := make([]byte, size)
	be := binary.BigEndian
	copy(b, luksMagic)
	be.PutUint16(b[6:], 2)
	be.PutUint64(b[8:], 16<<10)
	be.PutUint64(b[16:], 7)
	copy(b[24:], "my label")
	copy(b[72:], "sha256")
	copy(b[168:], "01234567-89ab-cdef-0123-456789abcdef")
	copy(b[208:], "glimpse")
	js := `{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},` +
		`"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},` +
		`"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"AAAA"}},` +
		`"1":{"type":"luks2","key_size":64,"area":{"type":"raw","offset":"290816","size":"258048","encryption":"aes-xts-plain64"},"kdf":{"type":"argon2id"}}},` +
		`"tokens":{},"segments":{"0":{"type":"crypt","offset":"1048576","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},` +
		`"digests":{"0":{"type":"pbkdf2","keyslots":["0","1"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"AAAA","digest":"AAAA"}},` +
		`"config":{"json_size":"12288","keyslots_size":"1032192"}}`
	copy(b[4096:], js)
	sum := sha256.Sum256(b[:16<<10])
	copy(b[448:], sum[:])
	return b
}

func TestLUKSFixtures(t *testing.T) {
	fxs := luksFixtures(t, t.TempDir())
	ptRunFixtures(t, fxs)
	for _, fx := range fxs {
		img := openT(t, fx.path, OpenOptions{})
		if !img.Info().Encrypted {
			t.Errorf("%s: not encrypted", fx.name)
		}
		if _, err := img.ReadAt(make([]byte, 512), 0); img.Size() > 0 && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: ReadAt: %v, want ErrUnsupported", fx.name, err)
		}
	}
}

func TestLUKSDescribe(t *testing.T) {
	dir := t.TempDir()
	qemutest.Need(t, "qemu-img")
	img := openT(t, luksCreate(t, dir, "q.luks"), OpenOptions{})
	l := img.Info().FormatSpecific.Data.(LUKSInfo)
	if l.Version != 1 || l.CipherName != "aes" || l.CipherMode != "xts-plain64" || l.HashSpec != "sha256" ||
		l.PayloadOffset != 2068480 || l.KeyBytes != 64 || len(l.UUID) != 36 || len(l.Slots) != 8 || l.V2 != nil {
		t.Fatalf("LUKSInfo %+v", l)
	}
	if s := l.Slots[0]; !s.Active || s.KeyOffset != 4096 || s.Stripes != 4000 || s.Iters == 0 {
		t.Errorf("slot 0 %+v", s)
	}
	if s := l.Slots[1]; s.Active || s.KeyOffset != 262144 || s.Iters != 0 {
		t.Errorf("slot 1 %+v", s)
	}
	// The slots and UUID agree with qemu-img's own description.
	q := qemutest.Info(t, img.Info().Filename, "luks")
	if !strings.Contains(string(q.FormatSpecific), l.UUID) || !strings.Contains(string(q.FormatSpecific), `"payload-offset": 2068480`) {
		t.Errorf("qemu-img format-specific %s", q.FormatSpecific)
	}

	b := luks2Crafted(4 << 20)
	img2, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l = img2.Info().FormatSpecific.Data.(LUKSInfo)
	m := l.V2
	if l.Version != 2 || l.UUID != "01234567-89ab-cdef-0123-456789abcdef" || l.PayloadOffset != 1<<20 || img2.Size() != 3<<20 ||
		m == nil || m.HeaderSize != 16<<10 || m.SequenceID != 7 || m.Label != "my label" || m.Subsystem != "glimpse" ||
		m.ChecksumValid == nil || !*m.ChecksumValid || len(m.Keyslots) != 2 || len(m.Segments) != 1 || m.Digests != 1 {
		t.Fatalf("LUKS2 %+v %+v", l, m)
	}
	if k := m.Keyslots[1]; k.ID != "1" || k.KDF != "argon2id" || k.Offset != 290816 || k.Size != 258048 {
		t.Errorf("keyslot 1 %+v", k)
	}
	if s := m.Segments[0]; s.Size != "dynamic" || s.Offset != 1<<20 || s.SectorSize != 4096 || s.Encryption != "aes-xts-plain64" {
		t.Errorf("segment %+v", s)
	}
}

// TestLUKSHostile: headers qemu refuses are FormatErrors; a broken LUKS2 checksum is a
// finding.
func TestLUKSHostile(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	q, err := os.ReadFile(luksCreate(t, t.TempDir(), "q.luks"))
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	v1 := []struct {
		name  string
		patch func(b []byte)
		field string
	}{
		{"key-bytes", func(b []byte) { be.PutUint32(b[108:], 0) }, "key-bytes"},
		{"stripes", func(b []byte) { be.PutUint32(b[208+48*3+44:], 0) }, "stripes"},
		{"active", func(b []byte) { be.PutUint32(b[208+48*2:], 7) }, "active"},
		{"slot-in-header", func(b []byte) { be.PutUint32(b[208+40:], 1) }, "key material offset"},
		{"slot-in-payload", func(b []byte) { be.PutUint32(b[104:], 100) }, "key material offset"},
		{"slots-overlap", func(b []byte) { be.PutUint32(b[208+48+40:], 9) }, "key material offset"},
		{"huge-stripes", func(b []byte) { be.PutUint32(b[208+44:], 0xffffffff) }, "key material offset"},
	}
	for _, tc := range v1 {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(q)
			tc.patch(b)
			_, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "h.luks"})
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Format != LUKS || fe.Field != tc.field {
				t.Fatalf("error %v, want a FormatError on %q", err, tc.field)
			}
		})
	}
	v2 := []struct {
		name  string
		patch func(b []byte)
		field string
	}{
		{"hdr-size", func(b []byte) { be.PutUint64(b[8:], 12345) }, "hdr_size"},
		{"hdr-size-huge", func(b []byte) { be.PutUint64(b[8:], 1<<40) }, "hdr_size"},
		{"hdr-offset", func(b []byte) { be.PutUint64(b[256:], 16384) }, "hdr_offset"},
		{"json", func(b []byte) { copy(b[4096:], "{oops") }, ""},
		{"no-segment", func(b []byte) { copy(b[4096+strings.Index(string(b[4096:]), `"segments"`):], `"segmentz"`) }, "segments"},
		{"segment-offset", func(b []byte) { copy(b[4096+strings.Index(string(b[4096:]), `"1048576"`):], `"-048576"`) }, "segments.0.offset"},
	}
	for _, tc := range v2 {
		t.Run(tc.name, func(t *testing.T) {
			b := luks2Crafted(2 << 20)
			tc.patch(b)
			_, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "h.luks"})
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Format != LUKS || fe.Field != tc.field {
				t.Fatalf("error %v, want a FormatError on %q", err, tc.field)
			}
		})
	}
	// The checksum covers the JSON: changing it is a corrupt finding, not an error.
	b := luks2Crafted(2 << 20)
	copy(b[4096+strings.Index(string(b[4096:]), "argon2id"):], "argon2i ")
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil || !hasFinding(img.Safety(), FindCorrupt) || !hasFinding(img.Safety(), FindLUKSVersion) {
		t.Fatalf("bad checksum: %v %v", err, img)
	}
	// A fixed-size segment sets the size; one past the end is a finding.
	b = luks2Crafted(2 << 20)
	copy(b[4096+strings.Index(string(b[4096:]), `"dynamic"`):], `"2097152"`)
	fixHash := func(b []byte) {
		clear(b[448:512])
		sum := sha256.Sum256(b[:16<<10])
		copy(b[448:], sum[:])
	}
	fixHash(b)
	img, err = Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil || img.Size() != 2<<20 || !hasFinding(img.Safety(), FindPastEOF) || hasFinding(img.Safety(), FindCorrupt) {
		t.Fatalf("fixed segment: %v %v", err, img)
	}
	// Other versions are described as far as the magic goes.
	b = luks2Crafted(1 << 20)
	be.PutUint16(b[6:], 3)
	img, err = Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil || !hasFinding(img.Safety(), FindLUKSVersion) || img.Info().FormatSpecific.Data.(LUKSInfo).Version != 3 {
		t.Fatalf("version 3: %v %v", err, img)
	}
	if _, err := Open(bytes.NewReader([]byte(luksMagic)), 6, OpenOptions{Format: LUKS}); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("6 bytes: %v", err)
	}
}

func FuzzLUKS(f *testing.F) {
	f.Add(luks2Crafted(20 << 10))
	if _, err := exec.LookPath("qemu-img"); (err == nil || qemutest.InCI()) && !ptFuzzWorker() {
		for _, fx := range luksFixtures(f, f.TempDir()) {
			fuzzSeeds(f, fx.path)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, LUKS)
	})
}
