package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os/exec"
	"path/filepath"
	"testing"

	"glimpse/internal/qemutest"
)

// qedFixtures builds qed images with qemu-img: every one is refused, and those with a
// backing file say so too.
func qedFixtures(t testing.TB, dir string) []fixture {
	qemutest.Need(t, "qemu-img")
	add := func(name, path string, findings ...string) fixture {
		return fixture{name: name, path: path, qemuFormat: "qed", format: QED, findings: findings}
	}
	base := qemutest.Create(t, dir, "base.qed", "qed", "10M")
	overlay := filepath.Join(dir, "overlay.qed")
	qemutest.Img(t, "create", "-q", "-f", "qed", "-b", "base.qed", "-F", "qed", overlay)
	return []fixture{
		add("qed-plain", base, FindUnsupportedFormat),
		add("qed-small-clusters", qemutest.Create(t, dir, "small.qed", "qed", "1G", "cluster_size=4k,table_size=2"), FindUnsupportedFormat),
		add("qed-backing", overlay,
			FindUnsupportedFormat, FindBackingFile),
		add("qed-backing-raw", qemutest.Create(t, dir, "raw-overlay.qed", "qed", "5M", "backing_file=base.qed", "backing_fmt=raw"),
			FindUnsupportedFormat, FindBackingFile),
	}
}

func TestQEDFixtures(t *testing.T) {
	dir := t.TempDir()
	fxs := qedFixtures(t, dir)
	ptRunFixtures(t, fxs)

	img := openT(t, fxs[3].path, OpenOptions{})
	info := img.Info()
	q := info.FormatSpecific.Data.(QEDInfo)
	if info.BackingFilename != "base.qed" || info.BackingFormat != "raw" || info.ClusterSize != 64<<10 ||
		q.TableSize != 4 || q.HeaderSize != 1 || q.Features != qedFBackingFile|qedFBackingNoProbe || q.L1TableOffset != 64<<10 ||
		q.BackingOffset != 64 || q.BackingSize != 8 || q.ImageSize != 5<<20 {
		t.Errorf("info %+v, qed %+v", info, q)
	}
	if _, err := img.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("ReadAt: %v, want ErrUnsupported", err)
	}
	if _, err := img.Extent(0, 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Extent: %v, want ErrUnsupported", err)
	}
	if q := qemutest.Info(t, fxs[3].path, "qed"); q.BackingFormat != "raw" {
		t.Errorf("qemu-img says backing format %q", q.BackingFormat)
	}
}

// qedCrafted is a valid qed header (64 KiB clusters, table size 4, 10 MiB) naming a
// backing file, followed by its L1 table.
func qedCrafted() []byte {
	b := make([]byte, 5*64<<10)
	le := binary.LittleEndian
	copy(b, qedMagic)
	le.PutUint32(b[4:], 64<<10)
	le.PutUint32(b[8:], 4)
	le.PutUint32(b[12:], 1)
	le.PutUint64(b[16:], qedFBackingFile)
	le.PutUint64(b[40:], 64<<10)
	le.PutUint64(b[48:], 10<<20)
	le.PutUint32(b[56:], 64)
	le.PutUint32(b[60:], 9)
	copy(b[64:], "base.qcow")
	return b
}

func TestQEDHostile(t *testing.T) {
	le := binary.LittleEndian
	b := qedCrafted()
	img, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ptCodes(img.Safety()); len(got) != 2 || img.Info().BackingFilename != "base.qcow" || img.Size() != 10<<20 {
		t.Errorf("crafted: %v %+v", got, img.Info())
	}
	cases := []struct {
		name  string
		patch func(b []byte) []byte
		field string
	}{
		{"cluster-zero", func(b []byte) []byte { le.PutUint32(b[4:], 0); return b }, "cluster_size"},
		{"cluster-odd", func(b []byte) []byte { le.PutUint32(b[4:], 3<<12); return b }, "cluster_size"},
		{"cluster-huge", func(b []byte) []byte { le.PutUint32(b[4:], 1<<31); return b }, "cluster_size"},
		{"table-size", func(b []byte) []byte { le.PutUint32(b[8:], 3); return b }, "table_size"},
		{"table-size-big", func(b []byte) []byte { le.PutUint32(b[8:], 32); return b }, "table_size"},
		{"image-size-odd", func(b []byte) []byte { le.PutUint64(b[48:], 1000); return b }, "image_size"},
		{"image-size-huge", func(b []byte) []byte { le.PutUint64(b[48:], 1<<63); return b }, "image_size"},
		{"header-size-zero", func(b []byte) []byte { le.PutUint32(b[12:], 0); return b }, "header_size"},
		{"header-size-overflow", func(b []byte) []byte { le.PutUint32(b[12:], 1<<20); return b }, "header_size"},
		{"l1-unaligned", func(b []byte) []byte { le.PutUint64(b[40:], 4096); return b }, "l1_table_offset"},
		{"l1-in-header", func(b []byte) []byte { le.PutUint32(b[12:], 2); return b }, "l1_table_offset"},
		{"backing-outside", func(b []byte) []byte { le.PutUint32(b[56:], 1<<17); return b }, "backing_filename_offset"},
		{"backing-in-header", func(b []byte) []byte { le.PutUint32(b[56:], 8); return b }, "backing_filename_offset"},
		{"backing-too-long", func(b []byte) []byte { le.PutUint32(b[60:], 4000); return b }, "backing_filename_size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.patch(qedCrafted())
			_, err := Open(bytes.NewReader(b), int64(len(b)), OpenOptions{Name: "h.qed"})
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Format != QED || fe.Field != tc.field {
				t.Fatalf("error %v, want a FormatError on %q", err, tc.field)
			}
		})
	}
	// Findings, not errors: unknown features, an L1 table past the end of the file.
	b = qedCrafted()
	le.PutUint64(b[16:], 0x100)
	img, err = Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil || !hasFinding(img.Safety(), FindUnknownFeature) || hasFinding(img.Safety(), FindBackingFile) {
		t.Errorf("unknown features: %v %v", err, img)
	}
	b = qedCrafted()[:128<<10]
	img, err = Open(bytes.NewReader(b), int64(len(b)), OpenOptions{})
	if err != nil || !hasFinding(img.Safety(), FindPastEOF) {
		t.Errorf("short L1: %v %v", err, img)
	}
	// Too short for a header, declared qed.
	if _, err := Open(bytes.NewReader([]byte("QED\x00")), 4, OpenOptions{Format: QED}); !errors.Is(err, ErrWrongFormat) {
		t.Errorf("4 bytes: %v", err)
	}
}

func FuzzQED(f *testing.F) {
	f.Add(qedCrafted()[:4096])
	if _, err := exec.LookPath("qemu-img"); (err == nil || qemutest.InCI()) && !ptFuzzWorker() {
		for _, fx := range qedFixtures(f, f.TempDir()) {
			fuzzSeeds(f, fx.path)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOpen(t, data, QED)
	})
}
