/** JSON Schema fragments shared by the route definitions (they also make up the OpenAPI document). */
import { NAME_PATTERN, PARAM_NAME_PATTERN } from '../../model/content.js';

export const Name = { type: 'string', pattern: NAME_PATTERN } as const;

export const paramsObject = {
  type: 'object',
  propertyNames: { pattern: PARAM_NAME_PATTERN },
  additionalProperties: true,
} as const;
