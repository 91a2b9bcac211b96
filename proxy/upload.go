package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"glimpse/api"
	"glimpse/inspect"
)

// upload relays PUT /v2/images/{id}/file and /stage to the upstream while the inspector
// reads the bytes; a refused image never reaches the upstream whole.
func (p *Proxy) upload(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		// The upstream cannot name such an image; let it say so, without the body.
		r.Body = http.NoBody
		r.ContentLength = 0
		p.rp.ServeHTTP(w, r)
		return
	}
	img, resp, err := p.getImage(r.Context(), id, forwardHeaders(r.Header))
	if err != nil {
		if r.Context().Err() == nil {
			p.log.Warn("upload: reading the image", "image", id, "err", err)
			api.WriteError(w, r, http.StatusBadGateway, "The upstream image service did not answer.")
		}
		return
	}
	if resp != nil {
		// The caller may not see the image, or it is gone: the upstream's answer, and no
		// byte of the upload goes anywhere.
		passBack(w, resp)
		return
	}
	format, err := declaredFormat(img)
	if err != nil {
		p.m.uploads.WithLabelValues("rejected").Inc()
		api.WriteError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	u := &uploadRelay{
		stream:  inspect.NewStream(inspect.OpenOptions{Name: id, Format: format, MaxVirtualSize: p.policy.MaxVirtualSize}),
		policy:  p.policy,
		maxSize: p.maxImageSize,
		done:    make(chan struct{}),
	}
	pr, pw := io.Pipe()
	out := r.Clone(context.WithValue(r.Context(), uploadKey{}, u))
	out.Body = pr
	go u.run(r.Body, pw)
	p.rp.ServeHTTP(w, out)
	// The upstream answered (or failed): stop the relay and wait for it, since the request
	// body may not be read after this handler returns.
	pr.CloseWithError(errUpstreamDone)
	<-u.done
	if f := u.refused(); f != nil {
		p.m.uploads.WithLabelValues("rejected").Inc()
		p.log.Info("upload refused", "image", id, "format", format, "finding", f[0].Code, "message", f[0].Message)
	} else {
		p.m.uploads.WithLabelValues("relayed").Inc()
	}
}

type uploadKey struct{}

var (
	errRefused      = errors.New("upload refused by inspection")
	errUpstreamDone = errors.New("upstream finished with the upload")
)

// declaredFormat is the format an upload must be: the image's disk_format, or ova when its
// container is an OVA. Glance's kernel and ramdisk formats (aki, ari, ami) are raw bytes.
func declaredFormat(img *api.Image) (inspect.Format, error) {
	if strings.EqualFold(api.Str(img.ContainerFormat), "ova") {
		return inspect.OVA, nil
	}
	df := strings.ToLower(api.Str(img.DiskFormat))
	switch df {
	case "":
		return "", nil // Glance refuses the upload itself; the content is still inspected
	case "ami", "aki", "ari":
		return inspect.Raw, nil
	}
	f, err := inspect.ParseFormat(df)
	if err != nil {
		return "", fmt.Errorf("Image data cannot be checked: disk_format %s is not one glimpse inspects.", df)
	}
	return f, nil
}

// uploadRelay copies the caller's body to the upstream through the inspector, holding back
// the last HoldBack bytes until the verdict is in.
type uploadRelay struct {
	stream  *inspect.Stream
	policy  inspect.Policy
	maxSize int64
	done    chan struct{}

	mu       sync.Mutex
	findings []inspect.Finding // why the upload was refused; nil while it is not
}

func (u *uploadRelay) refused() []inspect.Finding {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.findings
}

// refuse records the verdict and then breaks the upstream request, in that order, so that
// the proxy's error handler finds the verdict.
func (u *uploadRelay) refuse(pw *io.PipeWriter, f []inspect.Finding) {
	u.mu.Lock()
	u.findings = f
	u.mu.Unlock()
	pw.CloseWithError(errRefused)
}

const relayBuffer = 256 << 10

func (u *uploadRelay) run(body io.Reader, pw *io.PipeWriter) {
	defer close(u.done)
	hold := int(u.stream.HoldBack())
	buf := make([]byte, hold+relayBuffer) // buf[:held] is the tail not yet sent
	held := 0
	var total int64
	for {
		n, err := body.Read(buf[held:])
		if n > 0 {
			total += int64(n)
			if u.maxSize > 0 && total > u.maxSize {
				u.stream.Abort()
				u.refuse(pw, []inspect.Finding{{Code: inspect.FindTooLarge, Message: fmt.Sprintf("the upload is more than %d bytes", u.maxSize)}})
				return
			}
			if _, werr := u.stream.Write(buf[held : held+n]); werr != nil {
				var rej *inspect.RejectedError
				if errors.As(werr, &rej) {
					u.stream.Abort()
					u.refuse(pw, judge(u.policy, rej.Verdict))
					return
				}
			}
			held += n
			if send := held - hold; send > 0 {
				if _, err := pw.Write(buf[:send]); err != nil {
					u.stream.Abort()
					return // the upstream is done with us
				}
				held = copy(buf, buf[send:held])
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			u.stream.Abort()
			pw.CloseWithError(fmt.Errorf("reading the upload: %w", err))
			return
		}
	}
	if f := judge(u.policy, u.stream.Close()); len(f) > 0 {
		u.refuse(pw, f)
		return
	}
	if _, err := pw.Write(buf[:held]); err != nil {
		return
	}
	pw.Close()
}

// judge is the policy's verdict, never empty for an image that could not be parsed.
func judge(pol inspect.Policy, v inspect.Verdict) []inspect.Finding {
	f := pol.Judge(v)
	if len(f) == 0 && v.Err != nil {
		f = []inspect.Finding{{Code: inspect.FindMalformed, Message: v.Err.Error()}}
	}
	return f
}

// refuse answers a refused upload with Glance's 400.
func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, findings []inspect.Finding) {
	msgs := make([]string, len(findings))
	for i, f := range findings {
		msgs[i] = f.String()
	}
	api.WriteErrorDetail(w, r, http.StatusBadRequest, "Image data rejected: "+strings.Join(msgs, "; "), "")
}
