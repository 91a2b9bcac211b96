package store

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"glimpse/api"
	"glimpse/internal/qemutest"
)

// TestUploadsRefused: unsafe or mislabelled images are refused with 400 naming the finding,
// and stay queued with nothing kept.
func TestUploadsRefused(t *testing.T) {
	qemutest.Need(t, "qemu-img", "genisoimage")
	st, srv := newServer(t, AuthNone{})
	c := as(t, srv.URL, "", "")
	dir := t.TempDir()

	base := qemutest.Create(t, dir, "base.raw", "raw", "1M")
	backed := filepath.Join(dir, "backed.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", backed, "1M")

	flat := qemutest.Create(t, dir, "flat.vmdk", "vmdk", "1M", "subformat=monolithicFlat")
	desc, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	hostDesc := strings.Replace(string(desc), `"flat-flat.vmdk"`, `"/etc/passwd"`, 1)
	if hostDesc == string(desc) {
		t.Fatalf("no extent line in the descriptor:\n%s", desc)
	}

	isoDir := filepath.Join(dir, "isodir")
	os.Mkdir(isoDir, 0o755)
	os.WriteFile(filepath.Join(isoDir, "hello.txt"), []byte("hello"), 0o644)
	iso := filepath.Join(dir, "a.iso")
	qemutest.Run(t, "genisoimage", "-quiet", "-o", iso, isoDir)
	polyglot := qemutest.Create(t, dir, "poly.qcow2", "qcow2", "10M")
	// The ISO's volume descriptors (sector 16 on) land in the qcow2's unused first cluster.
	cmd := exec.Command("dd", "if="+iso, "of="+polyglot, "bs=2048", "skip=16", "seek=16", "count=2", "conv=notrunc", "status=none")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dd: %v %s", err, out)
	}

	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name, disk, container string
		data                  []byte
		finding               string
	}{
		{"qcow2 with a backing file", "qcow2", "bare", read(backed), "backing-file"},
		{"vmdk naming a host file", "vmdk", "bare", []byte(hostDesc), "vmdk-host-extent"},
		{"raw declared qcow2", "qcow2", "bare", randomBytes(t, 1<<20), "format-mismatch"},
		{"iso that is also a qcow2, as iso", "iso", "bare", read(polyglot), ""},
		{"iso that is also a qcow2, as qcow2", "qcow2", "bare", read(polyglot), ""},
		{"qcow2 declared raw", "raw", "bare", read(qemutest.Create(t, dir, "plain.qcow2", "qcow2", "1M")), "format-mismatch"},
		{"not an ova", "raw", "ova", randomBytes(t, 64<<10), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := c.create(`{"name":"bad","disk_format":"` + tc.disk + `","container_format":"` + tc.container + `"}`)
			r := c.upload(img.ID, tc.data)
			if r.code != 400 || !strings.HasPrefix(r.message(), "Image data refused by inspection: ") ||
				(tc.finding != "" && !strings.Contains(r.message(), tc.finding+": ")) {
				t.Fatalf("upload: %d %s", r.code, r.body)
			}
			t.Logf("refused: %s", r.message())
			got := c.do("GET", "/v2/images/"+img.ID, nil).image(t)
			if got.Status != "queued" || got.Size != nil || got.Checksum != nil {
				t.Fatalf("after refusal: status %s size %v", got.Status, got.Size)
			}
			expect(t, c.do("GET", "/v2/images/"+img.ID+"/file", nil), 204, "")
			if _, err := os.Stat(filepath.Join(st.imgDir, img.ID)); !os.IsNotExist(err) {
				t.Fatalf("data kept: %v", err)
			}
		})
	}
	tmps, _ := os.ReadDir(st.tmpDir)
	if len(tmps) != 0 {
		t.Fatalf("%d temporary files left", len(tmps))
	}
	// Safe images of the same formats go through, with their virtual size.
	for _, tc := range []struct {
		disk  string
		path  string
		vsize int64
	}{
		{"qcow2", qemutest.Create(t, dir, "ok.qcow2", "qcow2", "5M"), 5 << 20},
		{"iso", iso, 0},
		{"vmdk", qemutest.Create(t, dir, "ok.vmdk", "vmdk", "3M", "subformat=streamOptimized"), 3 << 20},
	} {
		img := c.create(`{"name":"ok","disk_format":"` + tc.disk + `","container_format":"bare"}`)
		expect(t, c.upload(img.ID, read(tc.path)), 204, "")
		got := c.do("GET", "/v2/images/"+img.ID, nil).image(t)
		want := tc.vsize
		if want == 0 {
			want = *got.Size
		}
		if got.Status != "active" || got.VirtualSize == nil || *got.VirtualSize != want {
			t.Errorf("%s: status %s virtual size %v, want %d", tc.disk, got.Status, got.VirtualSize, want)
		}
	}
	m := c.do("GET", "/metrics", nil)
	if !strings.Contains(string(m.body), `glimpse_store_uploads_total{result="refused"} 7`) {
		t.Errorf("metrics: refused uploads not counted")
	}
}

// TestRefusalStopsReading: a stream decided early is not read to its end.
func TestRefusalStopsReading(t *testing.T) {
	_, srv := newServer(t, AuthNone{})
	c := as(t, srv.URL, "", "")
	img := c.create(`{"name":"x","disk_format":"qcow2","container_format":"bare"}`)
	const size = 256 << 20
	counted := &countingReader{r: io.LimitReader(zeroReader{}, size)}
	r := c.do("PUT", "/v2/images/"+img.ID+"/file", io.Reader(counted))
	if r.code != 400 || !strings.Contains(r.message(), "format-mismatch") {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if counted.n >= size {
		t.Fatalf("the whole %d bytes were sent for a stream refused at its head", counted.n)
	}
	t.Logf("client sent %d of %d bytes", counted.n, size)
	if got := c.do("GET", "/v2/images/"+img.ID, nil).image(t); got.Status != api.StatusQueued {
		t.Fatal(got.Status)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

var _ = bytes.NewReader
