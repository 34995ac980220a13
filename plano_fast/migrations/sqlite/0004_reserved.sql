-- Reserved for the store split of issue 19 (branch issue-19-store), which may add its
-- own 0004.  Versions must have no gap, so this empty step holds the number until then:
-- at the merge, replace this file with that branch's 0004 (or keep it if it adds none).
SELECT 1;
