package store

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"glimpse/convert"
	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// TestUploadOVA: an upload with container_format ova is inspected as an OVA: one packed by
// glimpse (manifest last) becomes active with the disk's virtual size; a member whose
// digest does not match the manifest, and a member with a path outside the archive, are
// refused and stay queued.
func TestUploadOVA(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	_, srv := newServer(t, AuthNone{})
	c := as(t, srv.URL, "", "")
	dir := t.TempDir()
	src := qemutest.Create(t, dir, "disk.qcow2", "qcow2", "3M")
	qemutest.IO(t, src, "qcow2", "write -P 0x5a 1M 64k")
	img, err := inspect.OpenFile(src, inspect.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	good := filepath.Join(dir, "vm.ova")
	if err := convert.Pack(context.Background(), []convert.PackDisk{{Image: img, Name: "disk.vmdk"}}, good, convert.PackOptions{}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}

	ok := c.create(`{"name":"vm","disk_format":"vmdk","container_format":"ova"}`)
	expect(t, c.upload(ok.ID, data), 204, "")
	got := c.do("GET", "/v2/images/"+ok.ID, nil).image(t)
	if got.Status != "active" || got.VirtualSize == nil || *got.VirtualSize != 3<<20 {
		t.Errorf("packed OVA: status %s, virtual size %v; want active, %d", got.Status, got.VirtualSize, 3<<20)
	}

	// One bit of the disk's data flipped: the manifest's SHA-256 no longer matches.
	tampered := bytes.Clone(data)
	i := bytes.Index(tampered, []byte("KDMV"))
	if i < 0 {
		t.Fatal("no vmdk in the OVA")
	}
	tampered[i+4096+100] ^= 1

	// A member that an extractor would write outside its directory.
	var evil bytes.Buffer
	tw := tar.NewWriter(&evil)
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		var b bytes.Buffer
		b.ReadFrom(tr)
		tw.WriteHeader(h)
		tw.Write(b.Bytes())
		if strings.HasSuffix(h.Name, ".ovf") {
			tw.WriteHeader(&tar.Header{Name: "../../etc/cron.d/evil", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
			tw.Write([]byte("evil\n"))
		}
	}
	tw.Close()

	for _, tc := range []struct {
		name, finding string
		data          []byte
	}{
		{"manifest mismatch", "ova-manifest", tampered},
		{"member path", "ova-member-path", evil.Bytes()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := c.create(`{"name":"bad","disk_format":"vmdk","container_format":"ova"}`)
			r := c.upload(im.ID, tc.data)
			if r.code != 400 || !strings.Contains(r.message(), tc.finding) {
				t.Fatalf("upload: %d %s", r.code, r.body)
			}
			if got := c.do("GET", "/v2/images/"+im.ID, nil).image(t); got.Status != "queued" {
				t.Errorf("after refusal: status %s", got.Status)
			}
		})
	}
}
