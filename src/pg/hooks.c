/*
 * tenancy's planner, executor and utility hooks: the part that calls the next hook in the chain.
 *
 * The chained call (the previous hook, or standard_planner / standard_Executor* /
 * standard_ProcessUtility) runs the user's statement, so it raises an ERROR whenever a query
 * fails, and PostgreSQL reports an ERROR with siglongjmp. A longjmp must not cross Rust frames
 * that own anything with a destructor; here it crosses none: every chained call is made from
 * the C functions below, and the Rust bodies (in src/stats/hooks.rs) run before or after it and
 * return normally (a Rust panic there becomes an ERROR at their #[pg_guard] boundary, raised
 * from C's point of view like any PostgreSQL function's).
 *
 * The statement-nesting depth is restored at the call by PG_TRY / PG_FINALLY, as
 * contrib/pg_stat_statements does (ExecutorRun, ExecutorFinish, ProcessUtility); the
 * (sub)transaction abort callbacks in Rust stay as a second line (a procedure's ROLLBACK).
 * The error itself passes through unchanged (PG_RE_THROW): SQLSTATE, message, detail, hint,
 * context, position, and the schema / table / column / constraint fields clients read. pgrx's
 * own guard would copy only part of the error and raise a new one (losing the constraint name
 * and the position), which is one reason the chain is not called from Rust.
 *
 * Each Rust body receives a small frame on this C stack (uint64 words) for what it keeps
 * between "before" and "after"; its layout is Rust's (checked there against FRAME_WORDS).
 */
#include "postgres.h"

#include "executor/executor.h"
#include "optimizer/planner.h"
#include "tcop/utility.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#define TENANCY_FRAME_WORDS 4

/* Rust bodies (src/stats/hooks.rs). */
extern void tenancy_planner_enter(uint64 *frame);
extern void tenancy_planner_exit(const uint64 *frame);
extern void tenancy_executor_start_enter(uint64 *frame);
extern void tenancy_executor_start_exit(QueryDesc *query_desc, const uint64 *frame);
extern void tenancy_executor_end_enter(QueryDesc *query_desc);
extern int64 tenancy_nesting_enter(void);
extern void tenancy_nesting_restore(int64 depth);
extern int64 tenancy_utility_enter(PlannedStmt *pstmt, int64 *frame);
extern void tenancy_utility_exit(int64 frame, int64 depth);
/* Rust bodies (src/admission.rs): per-workspace admission control. */
extern void tenancy_admission_start(QueryDesc *query_desc);
extern void tenancy_admission_run(QueryDesc *query_desc);
extern void tenancy_admission_end(QueryDesc *query_desc);
extern int64 tenancy_admission_utility_start(PlannedStmt *pstmt);
extern void tenancy_admission_utility_end(int64 token);
/* backend-local state of src/admission.rs, read here so that a backend with nothing to admit
 * makes no call into Rust: slots and timeouts held, and "no limits in this database" */
extern uint32 tenancy_admission_busy;
extern uint32 tenancy_admission_none;

static planner_hook_type prev_planner = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

static PlannedStmt *
tenancy_planner(Query *parse, const char *query_string, int cursor_options,
				ParamListInfo bound_params)
{
	uint64		frame[TENANCY_FRAME_WORDS] = {0};
	PlannedStmt *result;

	tenancy_planner_enter(frame);
	/* an ERROR skips the exit: planning time is simply not recorded */
	if (prev_planner)
		result = prev_planner(parse, query_string, cursor_options, bound_params);
	else
		result = standard_planner(parse, query_string, cursor_options, bound_params);
	tenancy_planner_exit(frame);
	return result;
}

static void
tenancy_executor_start(QueryDesc *query_desc, int eflags)
{
	uint64		frame[TENANCY_FRAME_WORDS] = {0};

	/* may wait for a slot of the workspace, or raise 53000 (a slot taken is given back at
	 * ExecutorEnd, or by the abort callbacks if the statement fails before) */
	if (!tenancy_admission_none)
		tenancy_admission_start(query_desc);
	tenancy_executor_start_enter(frame);
	if (prev_executor_start)
		prev_executor_start(query_desc, eflags);
	else
		standard_ExecutorStart(query_desc, eflags);
	tenancy_executor_start_exit(query_desc, frame);
}

static void
tenancy_executor_run(QueryDesc *query_desc, ScanDirection direction, uint64 count,
					 bool execute_once)
{
	int64		depth;

	if (tenancy_admission_busy)
		tenancy_admission_run(query_desc);
	depth = tenancy_nesting_enter();

	PG_TRY();
	{
		if (prev_executor_run)
			prev_executor_run(query_desc, direction, count, execute_once);
		else
			standard_ExecutorRun(query_desc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		tenancy_nesting_restore(depth);
	}
	PG_END_TRY();
}

static void
tenancy_executor_finish(QueryDesc *query_desc)
{
	int64		depth = tenancy_nesting_enter();

	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(query_desc);
		else
			standard_ExecutorFinish(query_desc);
	}
	PG_FINALLY();
	{
		tenancy_nesting_restore(depth);
	}
	PG_END_TRY();
}

static void
tenancy_executor_end(QueryDesc *query_desc)
{
	tenancy_executor_end_enter(query_desc);
	if (prev_executor_end)
		prev_executor_end(query_desc);
	else
		standard_ExecutorEnd(query_desc);
	if (tenancy_admission_busy)
		tenancy_admission_end(query_desc);
}

static void
tenancy_process_utility(PlannedStmt *pstmt, const char *query_string, bool read_only_tree,
						ProcessUtilityContext context, ParamListInfo params,
						QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc)
{
	int64		frame;
	int64		admission = tenancy_admission_none ? 0 : tenancy_admission_utility_start(pstmt);
	int64		depth = tenancy_utility_enter(pstmt, &frame);

	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, query_string, read_only_tree, context, params,
								 query_env, dest, qc);
		else
			standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params,
									query_env, dest, qc);
	}
	PG_FINALLY();
	{
		tenancy_utility_exit(frame, depth);
		if (admission != 0)
			tenancy_admission_utility_end(admission);
	}
	PG_END_TRY();
}

/*
 * Re-arm PostgreSQL's statement timeout to `ms` from now, unless the one running ends sooner
 * (a workspace's statement_timeout: the smaller of it and the session's wins). PostgreSQL
 * disables the statement timeout when the statement ends, as it does its own.
 */
extern void tenancy_arm_statement_timeout(int ms);

void
tenancy_arm_statement_timeout(int ms)
{
	if (ms <= 0)
		return;
	if (get_timeout_active(STATEMENT_TIMEOUT) &&
		get_timeout_finish_time(STATEMENT_TIMEOUT) <= GetCurrentTimestamp() + (TimestampTz) ms * 1000)
		return;
	enable_timeout_after(STATEMENT_TIMEOUT, ms);
}

/* Called once from _PG_init in the postmaster (preload only). */
extern void tenancy_install_statement_hooks(void);

void
tenancy_install_statement_hooks(void)
{
	prev_planner = planner_hook;
	planner_hook = tenancy_planner;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = tenancy_executor_start;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = tenancy_executor_run;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = tenancy_executor_finish;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = tenancy_executor_end;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = tenancy_process_utility;
}
