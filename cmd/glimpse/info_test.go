package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// infoFixture is an image made by qemu-img and the -f qemu-img needs to open it.
type infoFixture struct {
	path, qemuFormat string
}

func infoFixtures(t *testing.T) []infoFixture {
	t.Helper()
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	base := qemutest.Create(t, dir, "base.qcow2", "qcow2", "100M")
	return []infoFixture{
		{qemutest.Create(t, dir, "disk.raw", "raw", "10M"), ""},
		{base, ""},
		{qemutest.Create(t, dir, "v2.qcow2", "qcow2", "3G", "compat=0.10"), ""},
		{qemutest.Create(t, dir, "overlay.qcow2", "qcow2", "100M", "backing_file=base.qcow2", "backing_fmt=qcow2"), ""},
		{qemutest.Create(t, dir, "sparse.vmdk", "vmdk", "1G"), ""},
		{qemutest.Create(t, dir, "stream.vmdk", "vmdk", "1G", "subformat=streamOptimized"), ""},
		{qemutest.Create(t, dir, "dynamic.vhd", "vpc", "100M"), ""},
		{qemutest.Create(t, dir, "fixed.vhd", "vpc", "100M", "subformat=fixed"), "vpc"},
		{qemutest.Create(t, dir, "disk.vhdx", "vhdx", "1G"), ""},
		{qemutest.Create(t, dir, "disk.vdi", "vdi", "100M"), ""},
	}
}

// TestInfoJSONMatchesQemu: `glimpse info --output=json` agrees with `qemu-img info
// --output=json` on the fields both have, with Glance's format names.
func TestInfoJSONMatchesQemu(t *testing.T) {
	for _, fx := range infoFixtures(t) {
		t.Run(filepath.Base(fx.path), func(t *testing.T) {
			q := qemutest.Info(t, fx.path, fx.qemuFormat)
			code, out, errOut := runCLI(t, "info", "--output=json", fx.path)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var g qemutest.ImgInfo
			if err := json.Unmarshal([]byte(out), &g); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			wantFormat := q.Format
			if wantFormat == "vpc" {
				wantFormat = "vhd"
			}
			if g.Format != wantFormat || g.VirtualSize != q.VirtualSize || g.BackingFilename != q.BackingFilename ||
				g.BackingFormat != q.BackingFormat || g.Filename != q.Filename || g.ActualSize != q.ActualSize ||
				g.DirtyFlag != q.DirtyFlag {
				t.Errorf("glimpse: %+v\nqemu-img: %+v", g, q)
			}
			if q.ClusterSize != 0 && g.ClusterSize != q.ClusterSize {
				t.Errorf("cluster-size %d, qemu-img %d", g.ClusterSize, q.ClusterSize)
			}
			if !strings.Contains(out, `"safety"`) {
				t.Errorf("no safety field: %s", out)
			}
		})
	}
}

func TestInfoHuman(t *testing.T) {
	fx := infoFixtures(t)
	code, out, _ := runCLI(t, "info", fx[3].path) // the overlay
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"file format: qcow2", "virtual size: 100 MiB (104857600 bytes)", "backing file: base.qcow2", "backing-file:"} {
		if !strings.Contains(out, want) {
			t.Errorf("human output lacks %q:\n%s", want, out)
		}
	}
}

func TestInfoSeveral(t *testing.T) {
	fx := infoFixtures(t)
	code, out, _ := runCLI(t, "info", "--output=json", fx[0].path, fx[1].path)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var arr []map[string]any
	if err := json.Unmarshal([]byte(out), &arr); err != nil || len(arr) != 2 {
		t.Fatalf("want a JSON array of 2: %v %s", err, out)
	}
	code, _, errOut := runCLI(t, "info", fx[0].path, "/nonexistent/disk.img")
	if code != 1 || !strings.Contains(errOut, "/nonexistent/disk.img") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}
}
