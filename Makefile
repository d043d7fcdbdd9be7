# make sanitize: the C core under AddressSanitizer + UBSan, then ThreadSanitizer,
# running its native-mode tests (see .ci/sanitize).
.PHONY: sanitize
sanitize:
	bash .ci/sanitize
