package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runCLI runs glimpse in process and returns its exit code, standard output and standard
// error.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"glimpse"}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestPermuteArgs(t *testing.T) {
	app := newApp(nil, nil, nil)
	for _, tc := range []struct{ in, want string }{
		{"glimpse info a.img --output=json", "glimpse info --output=json -- a.img"},
		{"glimpse info a.img --output json b.img", "glimpse info --output json -- a.img b.img"},
		{"glimpse check -f qcow2 a.img --allow-backing", "glimpse check -f qcow2 --allow-backing -- a.img"},
		{"glimpse info -- -weird-name", "glimpse info -- -weird-name"},
		{"glimpse nosuch a b", "glimpse nosuch a b"},
	} {
		got := strings.Join(permuteArgs(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("permuteArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	if code, _, errOut := runCLI(t, "info"); code != 1 || !strings.Contains(errOut, "no FILE") {
		t.Errorf("info without FILE: code %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "info", "--output=xml", "x"); code != 1 || !strings.Contains(errOut, "--output") {
		t.Errorf("bad --output: code %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "info", "-f", "nosuch", "x"); code != 1 || !strings.Contains(errOut, "unknown format") {
		t.Errorf("bad -f: code %d, stderr %q", code, errOut)
	}
	if code, _, _ := runCLI(t, "--help"); code != 0 {
		t.Errorf("--help: code %d", code)
	}
}
