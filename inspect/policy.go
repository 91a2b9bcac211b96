package inspect

import (
	"fmt"
	"slices"
	"strings"
)

// Policy is what an operator accepts beyond the safety rules every image must pass: which
// formats, how large, whether images may depend on other files. The CLI's check command and
// the servers' upload checks share it.
type Policy struct {
	// AllowFormats, when not empty, lists the formats accepted; for a container every disk
	// inside must be in the list as well.
	AllowFormats []Format
	// MaxVirtualSize, when above zero, is the largest virtual size accepted.
	MaxVirtualSize int64
	// AllowBacking accepts images that name a backing file, data file or parent (the
	// FindBackingFile and FindDataFile findings), as long as nothing else is wrong.
	AllowBacking bool
}

// ParseFormatList parses a comma-separated list of format names ("qcow2,raw,vpc").
func ParseFormatList(s string) ([]Format, error) {
	var out []Format
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		f, err := ParseFormat(part)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// Evaluate returns the findings that make info unacceptable under the policy: its safety
// findings (less those the policy allows) and the policy's own.
func (p Policy) Evaluate(info Info) []Finding {
	var out []Finding
	for _, f := range info.Safety {
		if p.AllowBacking && (f.Code == FindBackingFile || f.Code == FindDataFile) {
			continue
		}
		if f.Code == FindVirtualSize && p.MaxVirtualSize > 0 {
			continue // re-evaluated below against this policy's limit
		}
		out = append(out, f)
	}
	if len(p.AllowFormats) > 0 && !slices.Contains(p.AllowFormats, info.Format) {
		out = append(out, Finding{FindNotAllowed, fmt.Sprintf("format %s is not in the allowed list (%s)", info.Format, joinFormats(p.AllowFormats))})
	}
	if p.MaxVirtualSize > 0 && info.VirtualSize > p.MaxVirtualSize {
		out = append(out, Finding{FindVirtualSize, fmt.Sprintf("virtual size %d bytes is above the limit of %d bytes", info.VirtualSize, p.MaxVirtualSize)})
	}
	for _, child := range info.Children {
		for _, f := range p.Evaluate(child) {
			if f.Code == FindNotAllowed || f.Code == FindVirtualSize {
				out = append(out, Finding{f.Code, child.Filename + ": " + f.Message})
			}
		}
	}
	return out
}

// Judge returns every reason to refuse an image with verdict v under the policy: the
// verdict's findings and the policy's own (format not allowed, too large). An image that
// could not be parsed keeps the finding its verdict carries. Uploads use it: the store and
// the proxy refuse an upload when Judge returns anything.
func (p Policy) Judge(v Verdict) []Finding {
	if v.Info != nil {
		info := *v.Info
		info.Safety = v.Findings
		return p.Evaluate(info)
	}
	out := append([]Finding(nil), v.Findings...)
	if len(p.AllowFormats) > 0 && v.Format != "" && !slices.Contains(p.AllowFormats, v.Format) {
		out = append(out, Finding{FindNotAllowed, fmt.Sprintf("format %s is not in the allowed list (%s)", v.Format, joinFormats(p.AllowFormats))})
	}
	return out
}
