package kinesis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/smithy-go"
)

// failure is what a failed call means to ditto.
type failure struct {
	reason string
	err    error // the reason with the error, for /health/ready
	// notReady: the stream or the credentials are wrong; /health/ready
	// says so until a call succeeds.
	notReady bool
	// invalid: Kinesis refused the request itself; retrying it unchanged
	// cannot succeed.
	invalid bool
}

// Error codes by meaning. Kinesis answers per record with
// ProvisionedThroughputExceededException, InternalFailure or a KMS code,
// and per call with any of them.
var (
	throttleCodes = map[string]bool{
		"ProvisionedThroughputExceededException": true, "KMSThrottlingException": true,
		"LimitExceededException": true, "ThrottlingException": true, "Throttling": true,
	}
	credentialCodes = map[string]bool{
		"AccessDeniedException": true, "UnrecognizedClientException": true, "InvalidSignatureException": true,
		"IncompleteSignature": true, "MissingAuthenticationToken": true, "InvalidClientTokenId": true,
		"ExpiredTokenException": true, "ExpiredToken": true, "SignatureDoesNotMatch": true,
	}
	kmsCodes = map[string]bool{
		"KMSAccessDeniedException": true, "KMSDisabledException": true, "KMSInvalidStateException": true,
		"KMSNotFoundException": true, "KMSOptInRequired": true,
	}
	invalidCodes = map[string]bool{
		"InvalidArgumentException": true, "ValidationException": true, "SerializationException": true,
	}
	// recordCodes are the per-record codes counted by name; others are
	// counted as "other", so that the label stays bounded.
	recordCodes = map[string]bool{"ProvisionedThroughputExceededException": true, "InternalFailure": true,
		"KMSThrottlingException": true, "KMSAccessDeniedException": true, "KMSDisabledException": true,
		"KMSInvalidStateException": true, "KMSNotFoundException": true, "KMSOptInRequired": true,
		"LimitExceededException": true, "ThrottlingException": true}
)

func isThrottle(code string) bool { return throttleCodes[code] }

// knownCode is code as a metric label.
func knownCode(code string) string {
	if recordCodes[code] {
		return code
	}
	return "other"
}

// errorCode is the API error code of err, or "".
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isAccessDenied(err error) bool { return errorCode(err) == "AccessDeniedException" }

// classify says what a failed call to stream means. The SDK's errors name
// the operation and Kinesis's message; they never hold the secret key.
func classify(err error, stream string) failure {
	code := errorCode(err)
	var f failure
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		f.reason = "Kinesis did not answer in time"
	case code == "ResourceNotFoundException":
		f.reason, f.notReady = fmt.Sprintf("Kinesis stream %s does not exist (or is not ACTIVE)", stream), true
	case code == "ResourceInUseException":
		f.reason, f.notReady = fmt.Sprintf("Kinesis stream %s is not ACTIVE", stream), true
	case credentialCodes[code]:
		f.reason, f.notReady = fmt.Sprintf("Kinesis refused ditto's credentials or access to stream %s (%s); check the AWS credentials and the IAM policy (kinesis:PutRecords, kinesis:DescribeStreamSummary)", stream, code), true
	case kmsCodes[code]:
		f.reason, f.notReady = fmt.Sprintf("the KMS key of Kinesis stream %s cannot be used (%s)", stream, code), true
	case throttleCodes[code]:
		f.reason = fmt.Sprintf("Kinesis throttled the writes to stream %s (%s)", stream, code)
	case invalidCodes[code]:
		f.reason, f.invalid = fmt.Sprintf("Kinesis refused the record for stream %s (%s)", stream, code), true
	case isCredentialsError(err):
		f.reason, f.notReady = "no usable AWS credentials (the SDK's default chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, container or instance role)", true
	default:
		f.reason = fmt.Sprintf("writing to Kinesis stream %s failed", stream)
	}
	f.err = fmt.Errorf("%s: %w", f.reason, err)
	return f
}

// isCredentialsError reports whether the SDK could not get credentials:
// its identity step ("get identity: …") or the signer failed.
func isCredentialsError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "get identity: ") || strings.Contains(msg, "failed to retrieve credentials") ||
		strings.Contains(msg, "failed to refresh cached credentials")
}

// countRetries counts, for one call of n records, the throttled attempts
// and the SDK's retries, through a wrapper around the SDK's own retryer
// (whose behaviour it does not change).
func (s *Sink) countRetries(n int) func(*kinesis.Options) {
	return func(o *kinesis.Options) {
		o.Retryer = &countingRetryer{Retryer: o.Retryer, records: float64(n), s: s}
	}
}

type countingRetryer struct {
	aws.Retryer
	records float64
	s       *Sink
}

func (r *countingRetryer) IsErrorRetryable(err error) bool {
	if code := errorCode(err); isThrottle(code) {
		r.s.throttled.WithLabelValues(knownCode(code)).Add(r.records)
	}
	return r.Retryer.IsErrorRetryable(err)
}

// GetRetryToken is asked just before the SDK retries a call.
func (r *countingRetryer) GetRetryToken(ctx context.Context, opErr error) (func(error) error, error) {
	release, err := r.Retryer.GetRetryToken(ctx, opErr)
	if err == nil {
		r.s.retried.WithLabelValues(knownCode(errorCode(opErr))).Add(r.records)
	}
	return release, err
}

// GetAttemptToken keeps the wrapped retryer's per-attempt token, if any.
func (r *countingRetryer) GetAttemptToken(ctx context.Context) (func(error) error, error) {
	if v2, ok := r.Retryer.(aws.RetryerV2); ok {
		return v2.GetAttemptToken(ctx)
	}
	return r.Retryer.GetInitialToken(), nil
}

func (r *countingRetryer) MaxAttempts() int { return r.Retryer.MaxAttempts() }

func (r *countingRetryer) RetryDelay(attempt int, err error) (time.Duration, error) {
	return r.Retryer.RetryDelay(attempt, err)
}
