package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// TestMapCLIWithQemu wants the same output as qemu-img map, in JSON and human form, for
// the formats whose allocation map glimpse reports as qemu-img does.
func TestMapCLIWithQemu(t *testing.T) {
	dir := t.TempDir()
	srcs := cliSources(t, dir)
	if cliFormats == nil || slices.Contains(cliFormats, inspect.QCOW2) {
		// A backing chain: the File column names the backing file for its runs.
		base := filepath.Join(dir, "qcow2.qcow2")
		top := filepath.Join(dir, "top.qcow2")
		qemutest.Img(t, "create", "-q", "-f", "qcow2", "-b", filepath.Base(base), "-F", "qcow2", top)
		qemutest.IO(t, top, "qcow2", "write -P 1 0 64k", "write -z 1M 64k", "write -P 2 5M 4k")
		srcs = append(srcs, cliSource{name: "backing", path: top, args: []string{"--allow-backing"}})
	}
	for _, s := range srcs {
		if !strings.HasPrefix(s.name, "qcow2") && !slices.Contains([]string{"raw", "backing", "vmdk", "vmdk-stream", "vhd"}, s.name) {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			for _, output := range []string{"json", "human"} {
				qargs := []string{"map", "-U", "--output=" + output}
				if s.qemuFormat != "" {
					qargs = append(qargs, "-f", s.qemuFormat)
				}
				code, want, _ := runTool(t, "qemu-img", append(qargs, s.path)...)
				args := append(append([]string{"map", "--output=" + output}, s.args...), s.path)
				gcode, got, stderr := runCLI(t, args...)
				if gcode != code || got != want {
					t.Errorf("%v: exit %d (stderr %q)\n%s\nqemu-img exits %d:\n%s", args, gcode, stderr, got, code, want)
				}
			}
		})
	}
}

func TestMapCLIErrors(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.raw")
	cliBase(t, a, 8)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"map"}, "need one FILE"},
		{[]string{"map", "--output=xml", a}, "--output"},
		{[]string{"map", filepath.Join(dir, "missing")}, "no such file"},
	} {
		code, _, stderr := runCLI(t, tc.args...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 and %q", tc.args[1:], code, stderr, tc.want)
		}
	}
}

// runTool runs a reference tool and returns its exit code, standard output and standard
// error.
func runTool(t *testing.T, name string, args ...string) (int, string, string) {
	t.Helper()
	qemutest.Need(t, name)
	var stdout, stderr strings.Builder
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stdout.String(), stderr.String()
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, stdout.String(), stderr.String()
}

// TestMapCLIEmpty: qemu-img's map of an empty disk is one empty entry.
func TestMapCLIEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "empty.raw")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, output := range []string{"json", "human"} {
		_, want, _ := runTool(t, "qemu-img", "map", "-f", "raw", "--output="+output, p)
		code, got, stderr := runCLI(t, "map", "--output="+output, p)
		if code != 0 || got != want {
			t.Errorf("%s: exit %d (%q): %q, qemu-img prints %q", output, code, stderr, got, want)
		}
	}
	if code, out, _ := runCLI(t, "compare", p, p); code != 0 || out != "Images are identical.\n" {
		t.Errorf("compare of empty disks: exit %d, %q", code, out)
	}
	out := filepath.Join(t.TempDir(), "out.raw")
	if code, _, stderr := runCLI(t, "convert", p, out); code != 0 {
		t.Fatalf("convert of an empty disk: %s", stderr)
	}
	if st, err := os.Stat(out); err != nil || st.Size() != 0 {
		t.Errorf("converted empty disk: %v, %v", st, err)
	}
}
