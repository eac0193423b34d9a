/** Scheduler factory: by name, or from a model's `scheduler/scheduler_config.json`. */
import { DdimScheduler } from './ddim';
import { EulerScheduler } from './euler';
import { PndmScheduler } from './pndm';
import {
  DEFAULT_CONFIG,
  type FromConfigOptions,
  type Scheduler,
  type SchedulerConfig,
  type SchedulerName,
  SD15_CONFIG,
  parseSchedulerConfig,
} from './scheduler';

export * from './scheduler';
export { DdimScheduler, EulerScheduler, PndmScheduler };

export const SCHEDULER_NAMES: readonly SchedulerName[] = ['pndm', 'ddim', 'euler'];

const CLASS_TO_NAME: Record<string, SchedulerName> = {
  PNDMScheduler: 'pndm',
  DDIMScheduler: 'ddim',
  EulerDiscreteScheduler: 'euler',
};

/** Per-class defaults of the keys that differ between diffusers' scheduler classes. */
const CLASS_DEFAULTS: Record<SchedulerName, Partial<SchedulerConfig>> = {
  pndm: { timestep_spacing: 'leading', skip_prk_steps: false },
  ddim: { timestep_spacing: 'leading', clip_sample: true, set_alpha_to_one: true },
  euler: { timestep_spacing: 'linspace' },
};

function build(name: SchedulerName, cfg: SchedulerConfig): Scheduler {
  switch (name) {
    case 'pndm':
      return new PndmScheduler(cfg);
    case 'ddim':
      return new DdimScheduler(cfg);
    case 'euler':
      return new EulerScheduler(cfg);
  }
}

function checkName(name: unknown, field: string): SchedulerName {
  if (typeof name !== 'string' || !(SCHEDULER_NAMES as readonly string[]).includes(name)) {
    throw new RangeError(`Expected one of ${SCHEDULER_NAMES.map((n) => `"${n}"`).join(', ')} for ${field} but received ${JSON.stringify(name)}`);
  }
  return name as SchedulerName;
}

/**
 * Builds a scheduler from a parsed `scheduler_config.json`. The class comes from `options.name` when given
 * (diffusers' `OtherScheduler.from_config(pipe.scheduler.config)`: same β schedule, another sampler), else from
 * `_class_name`. Unknown keys are reported through `options.warn` and ignored.
 */
export function fromConfig(raw: Record<string, unknown>, options: FromConfigOptions & { name?: SchedulerName } = {}): Scheduler {
  let name: SchedulerName;
  if (options.name !== undefined) {
    name = checkName(options.name, 'options.name');
  } else {
    const cls = raw?._class_name;
    if (typeof cls !== 'string' || !(cls in CLASS_TO_NAME)) {
      throw new RangeError(
        `scheduler config "_class_name" is ${JSON.stringify(cls)}; supported: ${Object.keys(CLASS_TO_NAME).join(', ')} (or pass options.name to pick one of ${SCHEDULER_NAMES.join(', ')})`,
      );
    }
    name = CLASS_TO_NAME[cls];
  }
  const cfg = parseSchedulerConfig(raw, { ...DEFAULT_CONFIG, ...CLASS_DEFAULTS[name] }, options);
  return build(name, cfg);
}

/**
 * `createScheduler('pndm')` gives the SD 1.x scheduler (SD15_CONFIG); `createScheduler('euler', config)` builds the
 * named class from a scheduler_config.json object; `createScheduler(config)` uses its `_class_name`.
 */
export function createScheduler(
  nameOrConfig: SchedulerName | Record<string, unknown>,
  config?: Record<string, unknown>,
  options: FromConfigOptions = {},
): Scheduler {
  if (typeof nameOrConfig === 'string') {
    const name = checkName(nameOrConfig, 'scheduler name');
    return fromConfig({ ...SD15_CONFIG, ...(config ?? {}) }, { ...options, name });
  }
  if (nameOrConfig === null || typeof nameOrConfig !== 'object') {
    throw new TypeError(`Expected a scheduler name or a scheduler_config.json object but received ${nameOrConfig === null ? 'null' : typeof nameOrConfig}`);
  }
  return fromConfig(nameOrConfig, options);
}
