package main

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"glimpse/internal/qemutest"
)

// setQCOW2Refcount sets the 16-bit refcount of cluster idx in a qcow2 made by qemu-img
// (refcount_order 4, one refcount block), to make leaks and corruptions on purpose.
func setQCOW2Refcount(t *testing.T, path string, idx int64, val uint16) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 104)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	if order := binary.BigEndian.Uint32(hdr[96:]); order != 4 {
		t.Fatalf("refcount_order %d, test expects 4", order)
	}
	rtOff := int64(binary.BigEndian.Uint64(hdr[48:]))
	ent := make([]byte, 8)
	if _, err := f.ReadAt(ent, rtOff); err != nil {
		t.Fatal(err)
	}
	blk := int64(binary.BigEndian.Uint64(ent))
	v := make([]byte, 2)
	binary.BigEndian.PutUint16(v, val)
	if _, err := f.WriteAt(v, blk+2*idx); err != nil {
		t.Fatal(err)
	}
}

func qcow2ClusterCount(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size() / 65536
}

// checkFixtures builds one image for each verdict of glimpse check.
func checkFixtures(t *testing.T) map[string]string {
	t.Helper()
	qemutest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	m := map[string]string{}
	m["clean"] = qemutest.Create(t, dir, "clean.qcow2", "qcow2", "64M")
	qemutest.IO(t, m["clean"], "qcow2", "write -P 0x11 0 1M")

	m["leak"] = qemutest.Create(t, dir, "leak.qcow2", "qcow2", "64M")
	qemutest.IO(t, m["leak"], "qcow2", "write -P 0x22 0 1M")
	n := qcow2ClusterCount(t, m["leak"])
	if err := os.Truncate(m["leak"], (n+1)*65536); err != nil {
		t.Fatal(err)
	}
	setQCOW2Refcount(t, m["leak"], n, 1) // allocated, referenced by nothing

	m["corrupt"] = qemutest.Create(t, dir, "corrupt.qcow2", "qcow2", "64M")
	qemutest.IO(t, m["corrupt"], "qcow2", "write -P 0x33 0 1M")
	setQCOW2Refcount(t, m["corrupt"], qcow2ClusterCount(t, m["corrupt"])-1, 0) // a data cluster

	m["backing"] = qemutest.Create(t, dir, "overlay.qcow2", "qcow2", "64M", "backing_file=clean.qcow2", "backing_fmt=qcow2")

	m["raw"] = filepath.Join(dir, "plain.raw")
	if err := os.WriteFile(m["raw"], make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCheckExitCodes(t *testing.T) {
	fx := checkFixtures(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"clean", []string{fx["clean"]}, exitClean},
		{"leaks", []string{fx["leak"]}, exitLeaks},
		{"corrupt", []string{fx["corrupt"]}, exitCorrupt},
		{"backing file", []string{fx["backing"]}, exitUnsafe},
		{"backing file allowed", []string{"--allow-backing", fx["backing"]}, exitClean},
		{"raw declared qcow2", []string{"-f", "qcow2", fx["raw"]}, exitUnsafe},
		{"qcow2 declared raw", []string{"-f", "raw", fx["clean"]}, exitUnsafe},
		{"missing", []string{filepath.Join(t.TempDir(), "nosuch.img")}, exitError},
		{"format not allowed", []string{"--allow-format", "raw,vmdk", fx["clean"]}, exitUnsafe},
		{"format allowed (qemu alias)", []string{"--allow-format", "vpc,qcow2", fx["clean"]}, exitClean},
		{"too large", []string{"--max-virtual-size", "32M", fx["clean"]}, exitUnsafe},
		{"large enough", []string{"--max-virtual-size", "64MiB", fx["clean"]}, exitClean},
		{"leaks and corrupt", []string{fx["leak"], fx["corrupt"]}, exitCorrupt},
		{"corrupt and unsafe", []string{fx["corrupt"], fx["backing"]}, exitUnsafe},
		{"missing and leaks", []string{fx["leak"], "/nonexistent/x"}, exitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, append([]string{"check"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("glimpse check %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(tc.args, " "), code, tc.code, out, errOut)
			}
		})
	}
}

// TestCheckAgreesWithQemu: the leak and corruption counts are qemu-img check's.
func TestCheckAgreesWithQemu(t *testing.T) {
	fx := checkFixtures(t)
	for _, name := range []string{"clean", "leak", "corrupt"} {
		path := fx[name]
		out, _ := qemutest.Output("qemu-img", "check", "--output=json", path)
		var q struct {
			Leaks       int `json:"leaks"`
			Corruptions int `json:"corruptions"`
		}
		if err := json.Unmarshal([]byte(out), &q); err != nil {
			t.Fatalf("qemu-img check %s: %v: %s", name, err, out)
		}
		_, gout, _ := runCLI(t, "check", "--output=json", path)
		var g checkResult
		if err := json.Unmarshal([]byte(gout), &g); err != nil {
			t.Fatalf("glimpse check %s: %v: %s", name, err, gout)
		}
		if g.Leaks != q.Leaks || g.Corruptions != q.Corruptions {
			t.Errorf("%s: glimpse finds %d leaks, %d corruptions; qemu-img %d, %d", name, g.Leaks, g.Corruptions, q.Leaks, q.Corruptions)
		}
	}
}

func TestCheckJSON(t *testing.T) {
	fx := checkFixtures(t)
	code, out, _ := runCLI(t, "check", "--output=json", fx["backing"], fx["clean"])
	if code != exitUnsafe {
		t.Fatalf("exit %d", code)
	}
	var rs []map[string]any
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rs) != 2 {
		t.Fatalf("want an array of 2, got %s", out)
	}
	if rs[0]["verdict"] != "unsafe" || rs[1]["verdict"] != "clean" {
		t.Errorf("verdicts %v, %v", rs[0]["verdict"], rs[1]["verdict"])
	}
	safety, _ := rs[0]["safety"].([]any)
	if len(safety) == 0 || !strings.Contains(out, `"code": "backing-file"`) {
		t.Errorf("backing-file finding missing: %s", out)
	}
	for _, k := range []string{"filename", "format", "check-errors", "image-end-offset", "total-clusters"} {
		if _, ok := rs[1][k]; !ok {
			t.Errorf("qemu-img check field %q missing: %v", k, rs[1])
		}
	}
}
